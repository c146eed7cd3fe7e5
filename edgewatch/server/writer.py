"""Commits: one transaction per batch of frames, with a frame-by-frame fallback.

The commit runs on the ingest thread, between reads of the socket. A writer thread was
tried and measured (bench/RESULTS.md, "why no writer thread"): the drivers release the
GIL for every row they step, and win it back only after the busy ingest thread's switch
interval, so a 20k-row SQLite commit took 0.39 s beside a decoding thread against 0.08 s
alone, and the daemon ingested 3x fewer records per second.
"""

from __future__ import annotations

import dataclasses
import logging

from sqlalchemy.exc import OperationalError, SQLAlchemyError

from edgewatch.server.store import Claims, FrameWrite, JobProgress, Store

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CommitBatch:
    """Frames to commit together, with what the commit changes on their jobs."""

    frames: list[FrameWrite]
    progress: list[JobProgress]
    committed: list[FrameWrite] = dataclasses.field(default_factory=list)
    """The frames whose transaction committed, in the order given."""
    failed: list[tuple[FrameWrite, str]] = dataclasses.field(default_factory=list)
    """The frames no transaction could take, each with the error's text."""
    database_down: bool = False


def commit(store: Store, batch: CommitBatch, claims: Claims | None = None) -> CommitBatch:
    """Write the batch (claiming its jobs' leases in the same transaction: ``ownership.py``);
    fills in ``committed``, ``failed`` and ``database_down``."""
    try:
        store.write(batch.frames, batch.progress, claims)
        batch.committed = list(batch.frames)
    except OperationalError as exc:
        # The database is away: nothing is acknowledged, the clients resend.
        log.error(
            "commit of %d frames failed, left unacknowledged: %s", len(batch.frames), exc.orig
        )
        batch.database_down = True
    except SQLAlchemyError as exc:
        log.error("commit of %d frames failed (%s); retrying one by one", len(batch.frames), exc)
        # No checkpoint in these transactions: the analysis has seen the records of every
        # frame, and some of them may not be stored.
        _one_by_one(store, batch, claims, checkpoints=False)
    return batch


def _one_by_one(store: Store, batch: CommitBatch, claims: Claims | None, checkpoints: bool) -> None:
    """Isolate the frame a transaction could not take; the others still commit."""
    for frame in batch.frames:
        # The job's progress goes with each of its frames: its fields are idempotent
        # (max, latest) and the records count grows by what this frame stored.
        progress = [p for p in batch.progress if p.job_pk == frame.job_pk]
        try:
            store.write([frame], progress, claims, checkpoints)
        except SQLAlchemyError as exc:
            batch.failed.append((frame, str(exc)[:200]))
        else:
            batch.committed.append(frame)
