"""Retention: raw step records older than ``retain`` days are dropped, their block
summaries kept (README, "Retention").

Steps are nearly every record (10,000 jobs at a step a second write about 47 GB a day);
what a finished job's page needs of them is its block summaries (``blocks.py``), which
retention archives before each drop (``archive.py``). Sharpness estimates, events, alerts
and the job rows are small and stay.

- PostgreSQL: whole day partitions go (``partitions.py``), running jobs' too: a day of
  a fleet is dropped in the time it takes to read it once, not deleted row by row.
- SQLite: the step rows older than the cutoff of finished jobs are archived and deleted,
  ``CHUNK_BLOCKS`` blocks per transaction, so that the single writer lock is never held
  for long away from the ingest (a job whose last record is older than the cutoff counts
  as finished: its client died without a JobEnd). Running jobs keep theirs.

A pass runs at the daemon's start and every ``PERIOD`` seconds on its own thread, never on
the ingest's: records are acknowledged meanwhile, each drop waits only for the locks of a
commit in flight.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Connection, Engine, func, or_, select, text

from edgewatch.server.archive import BLOCK, aggregate_sql, upsert_sql
from edgewatch.server.counters import DaemonCounters
from edgewatch.server.partitions import DAY, Dropped, ensure, retire
from edgewatch.server.tables import JobRow, StepRow

log = logging.getLogger(__name__)

PERIOD = 3600.0
"""Seconds between passes: partitions are made a week ahead, retention is by days."""
CHUNK_BLOCKS = 64
"""SQLite: blocks (of 256 sequence numbers) archived and deleted per transaction."""


class Retention:
    """``run()`` makes the coming partitions (PostgreSQL) and drops what is older than
    ``retain`` days (when it is set); ``loop(stop)`` runs it every PERIOD seconds."""

    def __init__(self, engine: Engine, retain: float, counters: DaemonCounters) -> None:
        self.engine = engine
        self.retain = retain
        self.counters = counters
        self.postgres = engine.dialect.name == "postgresql"
        self._lock = threading.Lock()  # one pass at a time (the thread's, an embedder's)

    def run(self, now: float | None = None, stop: threading.Event | None = None) -> Dropped:
        """One pass, as if the time were ``now`` (default: the clock's)."""
        with self._lock:
            return self._run(time.time() if now is None else now, stop)

    def _run(self, now: float, stop: threading.Event | None) -> Dropped:
        if self.postgres:
            made = ensure(self.engine, now)
            if made:
                log.info("made step partition(s) %s", ", ".join(made))
        if not self.retain > 0:
            return Dropped()
        cutoff = now - self.retain * DAY
        if self.postgres:
            dropped = retire(self.engine, cutoff)
        else:
            dropped = Dropped(rows=self._delete_finished(cutoff, stop))
        self.counters.retention_partitions += len(dropped.partitions)
        self.counters.retention_rows += dropped.rows
        if dropped.partitions or dropped.rows:
            log.info(
                "retention (%g days): dropped %d step rows%s; their block summaries stay",
                self.retain,
                dropped.rows,
                f" in partition(s) {', '.join(dropped.partitions)}" if dropped.partitions else "",
            )
        return dropped

    def loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run(stop=stop)
            except Exception:
                log.exception("retention pass failed; the next one is in %.0f s", PERIOD)
            stop.wait(PERIOD)

    def _delete_finished(self, cutoff: float, stop: threading.Event | None) -> int:
        jobs = select(JobRow.pk).where(or_(JobRow.status != "running", JobRow.last_seen < cutoff))
        with self.engine.connect() as conn:
            pks = list(conn.scalars(jobs.order_by(JobRow.pk)))
        deleted = 0
        for pk in pks:
            with self.engine.connect() as conn:
                runs = _runs_with_bounds(conn, pk)
            for run, first, last in runs:
                chunk = CHUNK_BLOCKS * BLOCK
                for lo in range(first - first % chunk, last + 1, chunk):
                    if stop is not None and stop.is_set():
                        return deleted
                    where = (
                        f"job_pk = {pk} AND run = {run} AND seq >= {lo} AND seq < {lo + chunk} "
                        f"AND wall_time < {float(cutoff)!r}"
                    )
                    with self.engine.begin() as conn:
                        conn.execute(text(upsert_sql("sqlite", aggregate_sql("steps", where))))
                        deleted += conn.execute(text(f"DELETE FROM steps WHERE {where}")).rowcount
        return deleted


def _runs_with_bounds(conn: Connection, job_pk: int) -> list[tuple[int, int, int]]:
    """(run, first seq, last seq) of the job's stored steps, by index seeks."""
    t = StepRow.__table__
    out = []
    run = conn.scalar(select(func.min(t.c.run)).where(t.c.job_pk == job_pk))
    while run is not None:
        in_run = (t.c.job_pk == job_pk, t.c.run == run)
        first = conn.scalar(select(func.min(t.c.seq)).where(*in_run))
        last = conn.scalar(select(func.max(t.c.seq)).where(*in_run))
        out.append((int(run), int(first), int(last)))
        run = conn.scalar(select(func.min(t.c.run)).where(t.c.job_pk == job_pk, t.c.run > run))
    return out
