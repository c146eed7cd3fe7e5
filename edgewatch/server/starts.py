"""A job's runs begin here: what a JobStart does to the daemon's view of its job.

A JobStart is one of three things: a resend from the process that began the job's current
run (nothing changes), the start of a new run (the job moves on to it, with a fresh
analysis), or a clash. A clash is a (job, run) the daemon holds from another process:
another host, pid or start time (a run id drawn twice, a copied job directory). Storing it
would make every record of that process a "duplicate" of the other's: acknowledged and
dropped. It is refused loudly instead (``Reject.RUN_CONFLICT``), counted and logged; the client
stops sending and says so.
"""

from __future__ import annotations

import logging
import time

from edgewatch.errors import FrameRejected
from edgewatch.schemas import JobStart, Reject
from edgewatch.server.ownership import Ownership
from edgewatch.server.state import JobState, JobTable
from edgewatch.server.store import Store

log = logging.getLogger("edgewatch.server.ingest")


def start_run(start: JobStart, store: Store, jobs: JobTable, ownership: Ownership) -> JobState:
    """Apply one JobStart; returns the job's state. Raises FrameRejected on a clash."""
    current = jobs.get(start.job) or _stored(start.job, store, jobs)
    if current is not None and current.run == start.run:
        if not _same_process(current, start):
            raise _conflict(start, f"held by {current.host} pid {current.pid}")
        if current.status == "running":
            return current  # a resent JobStart
    elif current is not None and start.wall_time < current.started_at:
        # An earlier run's JobStart arriving late (from a spool the next run sent on):
        # its records are stored under their own run; the job stays on its latest.
        return current
    elif current is not None and store.has_run(current.pk, start.run):
        raise _conflict(start, "an earlier run of this job with this id is stored")
    row = store.upsert_job(start)
    state = JobState.from_row(row, time.time())
    state.records = row["records"]
    log.info("job %r started run %d (%s)", start.job, start.run, start.optimizer.kind)
    return ownership.begin_run(state)


def _stored(job: str, store: Store, jobs: JobTable) -> JobState | None:
    """A job this daemon has not seen, as the database has it: begun at another daemon
    sharing the database, whose client moved here (its JobStart is sent again first).
    Its analysis stays with the lease's holder; a commit of its records here takes it
    over once that lease has expired (``ownership.py``)."""
    row = store.job(job)
    if row is None:
        return None
    state = JobState.from_row(row, time.time())
    jobs.put(state)
    return state


def _same_process(current: JobState, start: JobStart) -> bool:
    """A resend comes from the same host with the same start time, and the same pid where
    the row has one (rows written before pids were stored have none)."""
    same_pid = current.pid is None or current.pid == start.pid
    return current.host == start.host and current.started_at == start.wall_time and same_pid


def _conflict(start: JobStart, why: str) -> FrameRejected:
    detail = f"job {start.job[:100]!r} run {start.run} from {start.host} pid {start.pid}"
    log.error("refused a JobStart: %s: %s", detail, why)
    return FrameRejected(Reject.RUN_CONFLICT, f"{detail}: {why}")
