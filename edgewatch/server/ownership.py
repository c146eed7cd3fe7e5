"""The jobs this daemon analyses: their analyses in memory, their leases and checkpoints.

Where several daemons share a database, each job's analysis belongs to the holder of its
lease (``leases.py``); the others store its records and leave it alone. This class keeps
the analyses of the jobs held, and moves them as the leases move:

    start:       take every expired lease; rebuild each running job held (checkpoint.py)
    JobStart:    claim the job; a new run held starts its analysis
    each commit: claim the jobs whose records it carries, in its transaction (their
                 alerts are written only if held, and a checkpoint when one is due);
                 after it, rebuild the analyses taken or found stale, drop those lost
    each tick:   see which leases another daemon took, or whose job it stored records of
    clean stop:  a last checkpoint of each analysis, then every lease released

A rebuild runs on the ingest thread right after a commit, with nothing pending: every
record the daemon received is then in the database, so the rebuilt analysis misses none.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from edgewatch.server import checkpoint
from edgewatch.server.analysis import RunAnalysis, rebuild
from edgewatch.server.config import Settings
from edgewatch.server.leases import Leases
from edgewatch.server.state import JobState, JobTable, Reading
from edgewatch.server.store import Store

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Claim:
    """What a commit's claim found, applied once its transaction has committed."""

    owner: Ownership
    job_pks: set[int]
    held: dict[int, int]
    """The jobs held, with their lease generation."""
    checkpointed: set[int]

    def apply(self) -> None:
        self.owner._after_claim(self)


class Ownership:
    def __init__(self, settings: Settings, store: Store, jobs: JobTable, owner: str) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self.leases = Leases(owner, settings.lease_seconds)
        self.analyses: dict[int, RunAnalysis] = {}
        """The current run's analysis of each job held (by job pk)."""
        self.generations: dict[int, int] = {}
        """The lease generation each held job's analysis has seen everything of."""
        self._checkpointed: dict[int, float] = {}  # monotonic time of each job's last one
        self._rebuild: dict[int, int] = {}  # taken or stale: rebuilt after the commit
        self._wanted: set[int] = set()
        """Jobs whose records this daemon stored while another held them: each tick tries
        to take them, so that a job whose holder died is analysed to its last record even
        when none comes after (its client finished, or died too)."""
        self._next_tick = 0.0

    # -- start ------------------------------------------------------------------------

    def start(self) -> None:
        """Take every lease free, rebuild the running jobs held; every other job shows its
        stored state (its last alert), unexported."""
        with self.store.engine.begin() as conn:
            held = self.leases.claim_all(conn)
        last = self.store.last_alerts()
        for state in self.jobs.snapshot():
            if state.pk in held and state.status == "running":
                self._rebuild[state.pk] = held[state.pk]
                continue
            step, sharpness = self.store.last_readings(state.pk, state.run)
            planned = self.store.had_plan(state.pk, state.run)
            state.restore(step, sharpness, last.get(state.pk), planned)
            state.owned = state.pk in held
            self.jobs.put(state)
        self.settle()

    def begin_run(self, state: JobState) -> JobState:
        """A JobStart began a new run of the job (or the job): claim it, and start its
        analysis if held. (A JobStart sent again for the run in progress claims nothing:
        the commits of its records do.)"""
        with self.store.engine.begin() as conn:
            held = self.leases.claim(conn, [state.pk])
        self.analyses.pop(state.pk, None)
        state.owned = state.pk in held
        self.jobs.put(state)
        if state.owned:
            self._settle_one(state.pk, held[state.pk])
        return self.jobs.get(state.job_id) or state

    # -- commits ----------------------------------------------------------------------

    def claim(self, conn: Connection, job_pks: Iterable[int], checkpoints: bool = True) -> Claim:
        """In a commit's transaction: claim its jobs, checkpoint the analyses due."""
        pks = set(job_pks)
        held = self.leases.claim(conn, pks)
        done = set()
        now = time.monotonic()
        for pk, generation in held.items():
            analysis = self.analyses.get(pk)
            if analysis is None or self.generations.get(pk) != generation or not checkpoints:
                continue  # stale or absent: a checkpoint must not skip records
            if now - self._checkpointed.get(pk, 0.0) >= self.settings.checkpoint_seconds:
                checkpoint.write(conn, analysis)
                done.add(pk)
        return Claim(self, pks, held, done)

    def _after_claim(self, claim: Claim) -> None:
        now = time.monotonic()
        for pk in claim.checkpointed:
            self._checkpointed[pk] = now
        for pk in claim.job_pks:
            generation = claim.held.get(pk)
            if generation is None:
                self._lose(pk)
                self._wanted.add(pk)
                continue
            self._wanted.discard(pk)
            if pk not in self.analyses or self.generations.get(pk) != generation:
                self._rebuild[pk] = generation

    def tick(self) -> None:
        """Every second or so, between commits: drop the jobs another daemon took, rebuild
        those whose records another daemon stored while this one held them, take those
        this one stored records of once their lease has expired."""
        now = time.monotonic()
        if now < self._next_tick or not (self.generations or self._rebuild or self._wanted):
            return
        self._next_tick = now + min(1.0, self.settings.lease_seconds / 3)
        try:
            with self.store.engine.begin() as conn:
                taken = self.leases.take(conn, self._wanted) if self._wanted else {}
                held = self.leases.held(conn)
        except SQLAlchemyError as exc:  # the database is away: the next tick tries again
            log.warning("cannot read the leases: %s", exc)
            return
        for pk, generation in taken.items():
            self._wanted.discard(pk)
            self._rebuild[pk] = generation
        for pk, generation in list(self.generations.items()):
            if pk in taken:
                continue
            if pk not in held:
                self._lose(pk)
            elif held[pk] != generation:
                self._rebuild[pk] = held[pk]
        self.settle()

    def settle(self) -> None:
        """Rebuild the analyses taken over or found stale (after a commit, nothing pending)."""
        todo, self._rebuild = self._rebuild, {}
        for pk, generation in todo.items():
            try:
                self._settle_one(pk, generation)
            except SQLAlchemyError as exc:  # tried again after the next commit or tick
                log.warning("cannot rebuild the analysis of job %d yet: %s", pk, exc)
                self.generations.pop(pk, None)
                self._rebuild[pk] = generation

    def _settle_one(self, pk: int, generation: int) -> None:
        state = self.jobs.get_pk(pk)
        if state is None:
            return
        row = self.store.job(state.job_id)
        if row is not None and (row["run"], row["status"]) != (state.run, state.status):
            # The job moved on at another daemon (a new run, its end) since this one
            # last saw it: the database says which run to analyse.
            state = JobState.from_row(row, time.time())
        self.generations[pk] = generation
        state.owned = True
        # A finished job too: its last records may have reached a daemon that did not hold
        # it, and the alerts they raise are found here.
        self._rebuild_one(state)
        self.jobs.put(state)

    def _rebuild_one(self, state: JobState) -> None:
        started = time.monotonic()
        predictor = self.settings.predictor()
        with self.store.engine.connect() as conn:
            resume = checkpoint.read(
                conn, state.pk, state.run, state.optimizer, predictor, state.total_steps
            )
        since = resume.last_seq if resume is not None else 0
        analysis = rebuild(
            self.store, state.pk, state.run, state.optimizer, predictor, state.total_steps, resume
        )
        self.analyses[state.pk] = analysis
        self._checkpointed[state.pk] = time.monotonic()
        forecast = analysis.forecast
        # The jobs row keeps the last step and loss; the forecast knows the LR.
        lr = forecast.lr
        newest = None if lr is None else Reading(state.last_step, lr, state.loss, None)
        state.apply(newest, analysis.last_sharpness, forecast, analysis.changed_at)
        if resume is None and analysis.last_seq == 0:  # a new job: nothing stored yet
            log.info("job %r: analysed by this daemon", state.job_id)
            return
        log.info(
            "job %r: analysis rebuilt from %s to record %d in %.2fs",
            state.job_id,
            f"its checkpoint at record {since}" if resume is not None else "its first record",
            analysis.last_seq,
            time.monotonic() - started,
        )

    def _lose(self, pk: int) -> None:
        self.generations.pop(pk, None)
        self._rebuild.pop(pk, None)
        if self.analyses.pop(pk, None) is not None:
            log.info("job %d is analysed by another daemon now", pk)
        state = self.jobs.get_pk(pk)
        if state is not None and state.owned:
            state.owned = False
            self.jobs.put(state)

    # -- stop -------------------------------------------------------------------------

    def close(self) -> None:
        """On a clean stop: checkpoint every analysis up to date, release every lease
        (without a database, the leases expire by themselves)."""
        try:
            with self.store.engine.begin() as conn:
                held = self.leases.held(conn)
                for pk, analysis in self.analyses.items():
                    if held.get(pk) == self.generations.get(pk):
                        checkpoint.write(conn, analysis)
                self.leases.release(conn)
        except SQLAlchemyError as exc:
            log.warning("could not release the leases: %s", exc)
