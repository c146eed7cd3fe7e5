"""The intake: frames in, rows to commit and replies out, with no socket.

``ingest.py`` moves bytes between the ROUTER socket and this class; everything the
daemon decides about a frame happens here, so it is testable by calling ``receive``
and ``commit`` with bytes and reading the replies they return:

    receive(identity, parts) --> check and convert --> pending     (or a Nack now)
    commit() --> one transaction (writer.py) --> update JobTable --> an Ack per frame

An Ack is built only for frames whose transaction committed; a frame whose commit
failed gets no reply, and the client sends it again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from typing import TypeAlias

from sqlalchemy.exc import DBAPIError, OperationalError

from edgewatch.errors import FrameRejected
from edgewatch.schemas import (
    CRITICAL_METHOD,
    Ack,
    Batch,
    Event,
    JobEnd,
    JobStart,
    Nack,
    Plan,
    Reject,
    Sharpness,
    Step,
    decode_batch,
)
from edgewatch.server import rows, writer
from edgewatch.server.analysis import RunAnalysis
from edgewatch.server.config import Settings
from edgewatch.server.counters import DaemonCounters, RateLimitedLog
from edgewatch.server.leases import daemon_name
from edgewatch.server.ownership import Ownership
from edgewatch.server.starts import start_run
from edgewatch.server.state import JobState, JobTable
from edgewatch.server.store import FrameWrite, JobProgress, Store
from edgewatch.server.writer import CommitBatch

log = logging.getLogger("edgewatch.server.ingest")

Reply: TypeAlias = tuple[bytes, Ack | Nack]
"""A reply to send: the peer's ROUTER identity and the message."""


@dataclasses.dataclass
class _PendingFrame:
    identity: bytes
    frame_id: int
    write: FrameWrite
    rejected: int
    reason: str
    oldest_wall_time: float


@dataclasses.dataclass
class _JobUpdate:
    """The newest values a commit brings for one job, applied to JobState after it."""

    last_seen: float = 0.0
    dropped: int = 0
    step: Step | None = None
    sharpness: Sharpness | None = None
    end: JobEnd | None = None


class Intake:
    """Accepts frames, starts jobs, commits and builds the replies; owns no socket."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        jobs: JobTable,
        counters: DaemonCounters,
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self.counters = counters
        self.ownership = Ownership(
            settings, store, jobs, owner or daemon_name(f"intake pid {os.getpid()} {id(self)}")
        )
        """The jobs this daemon analyses (``owner``: its name in the leases table)."""
        self.deadline: float | None = None
        """When the pending frames are due to be committed (``time.monotonic()``)."""
        self.pending_rows = 0
        self._pending: list[_PendingFrame] = []
        self._updates: dict[int, _JobUpdate] = {}
        self._log = RateLimitedLog()

    @property
    def analyses(self) -> dict[int, RunAnalysis]:
        """The current run's forecast of each job this daemon holds, by job pk."""
        return self.ownership.analyses

    def tick(self) -> None:
        """Between commits, with nothing pending: follow the leases (``ownership.py``)."""
        if not self._pending:
            self.ownership.tick()

    def drop_pending(self) -> None:
        """Forget what is not committed (after a bug): the clients resend it."""
        self._pending, self._updates, self.pending_rows, self.deadline = [], {}, 0, None

    def count_rejected(self, reason: Reject, what: str) -> None:
        self.counters.rejected[reason] += 1
        self._log.warning(reason, "%s: %s", what, reason)

    # -- one frame --------------------------------------------------------------------

    def receive(self, identity: bytes, parts: list[bytes]) -> list[Reply]:
        """Take one multipart message (the identity stripped); returns the replies now due."""
        if len(parts) != 1:
            return [
                self._reject(identity, None, FrameRejected(Reject.MALFORMED, f"{len(parts)} parts"))
            ]
        try:
            batch = decode_batch(parts[0], self.settings.max_frame_bytes)
        except FrameRejected as exc:
            return [self._reject(identity, None, exc)]
        problem = rows.check_batch(batch)
        if problem is not None:
            return [self._reject(identity, batch.frame_id, FrameRejected(*problem))]
        try:
            return self._accept(identity, batch)
        except FrameRejected as exc:  # a JobStart refused: the frame is not stored
            return [self._reject(identity, batch.frame_id, exc)]
        except (OperationalError, DBAPIError) as exc:
            # Only a job start writes here (see _accept); the frame stays unacknowledged
            # and the client sends it again once the database answers.
            log.error("database error while registering job %r: %s", batch.job, exc)
            return []

    def _reject(self, identity: bytes, frame_id: int | None, exc: FrameRejected) -> Reply:
        self.counters.rejected[exc.reason] += 1
        self._log.warning(exc.reason, "rejected frame: %s", exc)
        return identity, Nack(frame_id=frame_id, reason=exc.reason, detail=exc.detail[:200])

    def _accept(self, identity: bytes, batch: Batch) -> list[Reply]:
        job, run = batch.job, batch.run
        state = self.jobs.get(job)
        pk = state.pk if state else -1
        analysis = self.analyses.get(pk)
        write = FrameWrite(job_pk=pk)
        steps = write.steps
        rejected: Counter[Reject] = Counter()
        last_step: Step | None = None
        last_sharpness: Sharpness | None = None
        first_wall = last_wall = None
        block: list[Step] = []  # steps for the forecast, fed in blocks (monitor/batch.py)

        def analyse_block() -> None:
            if analysis is not None and block:
                for alert, wall in analysis.steps(block):
                    write.alerts.append(analysis.alert_row(alert, wall))
            block.clear()

        for record in batch.records:
            # Steps are nearly every record: one type test, one check, one tuple.
            if type(record) is Step:
                reason = rows.check_step(record, job, run)
                if reason is None and state is not None:
                    steps.append(rows.step_row(pk, record))
                    last_step = record
                    last_wall = record.wall_time
                    first_wall = first_wall or last_wall
                    if analysis is not None and record.run == analysis.run:
                        block.append(record)
                    continue
            else:
                analyse_block()  # the steps before this record, first
                reason = rows.check_record(record, job, run)
                if reason is None and isinstance(record, JobStart):
                    state = start_run(record, self.store, self.jobs, self.ownership)
                    pk = write.job_pk = state.pk
                    analysis = self.analyses.get(pk)
                    continue
                if reason is None and state is not None:
                    last_wall = record.wall_time
                    first_wall = first_wall or last_wall
                    match record:
                        case Sharpness():
                            write.sharpness.append(rows.sharpness_row(pk, record))
                            if record.method != CRITICAL_METHOD:  # the gauges show λ_max
                                last_sharpness = record
                        case Event():
                            write.events.append(rows.event_row(pk, record))
                        case Plan():
                            write.plans.append(rows.plan_row(pk, record))
                        case JobEnd():
                            write.end = record
                    if analysis is not None and record.run == analysis.run:
                        alert = analysis.record(record)
                        if alert is not None:
                            write.alerts.append(analysis.alert_row(alert, last_wall))
                    continue
            rejected[reason or Reject.UNKNOWN_JOB] += 1  # a client must send its JobStart first
        analyse_block()
        if state is None and rejected.get(Reject.UNKNOWN_JOB):
            # The whole frame is of a job this daemon has no start for (its database was
            # replaced, or the start is still on its way). Refuse it as a frame: the client
            # keeps it, sends its JobStart again, then this frame.
            exc = FrameRejected(Reject.UNKNOWN_JOB, job[:100])
            return [self._reject(identity, batch.frame_id, exc)]
        if state is not None and last_wall is not None:
            update = self._updates.setdefault(pk, _JobUpdate())
            update.last_seen = max(update.last_seen, last_wall)
            update.dropped = max(update.dropped, batch.dropped)
            update.step = last_step or update.step
            update.sharpness = last_sharpness or update.sharpness
            update.end = write.end or update.end
        for reason, n in rejected.items():
            self.counters.rejected[reason] += n
            self._log.warning(reason, "rejected %d record(s) of job %r: %s", n, job, reason)
        oldest = first_wall if first_wall is not None else time.time()
        self._pending.append(
            _PendingFrame(
                identity,
                batch.frame_id,
                write,
                sum(rejected.values()),
                ",".join(sorted(rejected)),
                oldest,
            )
        )
        self.pending_rows += write.rows
        if self.deadline is None:
            self.deadline = time.monotonic() + self.settings.commit_interval
        return []

    # -- commit -----------------------------------------------------------------------

    def commit(self) -> list[Reply]:
        """Commit the pending frames in one transaction; returns their replies."""
        pending, updates = self._pending, self._updates
        self.drop_pending()
        if not pending:
            return []
        progress = [
            JobProgress(
                job_pk=pk,
                last_seen=u.last_seen,
                last_step=u.step.step if u.step else None,
                last_loss=u.step.loss if u.step else None,
                dropped=u.dropped,
            )
            for pk, u in updates.items()
        ]
        batch = writer.commit(
            self.store, CommitBatch([p.write for p in pending], progress), self.ownership.claim
        )
        if batch.database_down:
            return []  # nothing acknowledged: the clients resend
        by_write = {id(p.write): p for p in pending}
        replies = [
            self._reject(
                by_write[id(w)].identity,
                by_write[id(w)].frame_id,
                FrameRejected(Reject.STORE_ERROR, error),
            )
            for w, error in batch.failed
        ]
        committed = [by_write[id(w)] for w in batch.committed]
        if not committed:
            return replies
        now = time.time()
        self.counters.records_ingested += sum(p.write.stored for p in committed)
        self.counters.commits += 1
        oldest = min(p.oldest_wall_time for p in committed)
        self.counters.ingest_lag_seconds = max(0.0, now - oldest)
        states = self._apply(updates, committed, now)
        self.ownership.settle()  # analyses taken over or stale: rebuilt, nothing pending
        for p in committed:
            ack = Ack(
                frame_id=p.frame_id,
                stored=p.write.stored,
                duplicates=p.write.rows - p.write.stored,
                rejected=p.rejected,
                reason=p.reason,
                stability_ratio=states[p.write.job_pk].ack_ratio
                if p.write.job_pk in states
                else None,
            )
            replies.append((p.identity, ack))
        return replies

    def _apply(
        self, updates: dict[int, _JobUpdate], pending: list[_PendingFrame], now: float
    ) -> dict[int, JobState]:
        """Bring the committed values into the job table; returns the updated states."""
        stored_by_job: Counter[int] = Counter()
        for p in pending:
            stored_by_job[p.write.job_pk] += p.write.stored
        by_pk = {s.pk: s for s in self.jobs.snapshot()}
        updated: dict[int, JobState] = {}
        for pk, u in updates.items():
            state = by_pk.get(pk)
            if state is None:
                continue
            updated[pk] = state
            state.records += stored_by_job[pk]
            state.received_at = now
            state.last_seen = max(state.last_seen, u.last_seen)
            state.dropped = max(state.dropped, u.dropped)
            if u.step is not None:
                state.last_step, state.lr = u.step.step, u.step.lr
                state.loss, state.grad_norm = u.step.loss, u.step.grad_norm
            if u.sharpness is not None:
                state.sharpness, state.sharpness_step = u.sharpness.value, u.sharpness.step
                state.preconditioned = u.sharpness.preconditioned
            if u.end is not None:
                if state.status == "running":  # not again for a resent end
                    log.info("job %r ended run %d: %s at step %s, %d records",
                             state.job_id, state.run, u.end.status, u.end.step,
                             state.records)  # fmt: skip
                state.status, state.ended_at = u.end.status, u.end.wall_time
            analysis = self.analyses.get(pk)
            if analysis is not None:
                state.follow(analysis.forecast, analysis.changed_at)
            self.jobs.put(state)
        return updated
