"""Per-job summaries of the record tables in blocks of 256 records, for the web page's charts.

A chart is a few thousand pixels wide; a job may have 10^7 steps. Reading them all per page
costs seconds (SQLite: ~5 s for a min/max GROUP BY over 10^7 rows on 2 cores, bench/perf/web.py),
so the daemon keeps, per job and run, the count, step range and min/max of each charted
column over every block of 256 consecutive sequence numbers: 3 MB for 10^7 steps. A page
then downsamples from the blocks (``series.py``) without touching the rows.

Rows are keyed by (job, run, seq), so a block is an index range scan. A refresh re-reads
the last ``TAIL_BLOCKS`` blocks and reads any new ones; a record that arrives more than
``TAIL_BLOCKS`` blocks behind the newest (a resend after a long outage) is missing from
the summary until the daemon restarts, while the rows themselves are all still served
raw when a chart zooms in. Summaries of long jobs are built in the background
(``SeriesCache.warm``), so that their page loads without waiting for the first build.

Step rows that retention dropped (README, "Retention") live on as their blocks in the
``step_blocks`` table (``archive.py``); a job's step summary is those blocks merged with
the ones summarised from the rows still stored, and ``RunBlocks.archived`` says how many
of a block's rows are gone, so that ``series.py`` answers from the blocks there.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import ColumnElement, Connection, Table, bindparam, func, select

from edgewatch.server.archive import BLOCK, BOUNDS, COLUMNS
from edgewatch.server.store import Store
from edgewatch.server.tables import SharpnessRow, StepBlockRow, StepRow

TAIL_BLOCKS = 64
"""Blocks re-read at each refresh: where late (resent) records may still land."""
SPARSE_CHUNK = 256
"""Blocks read per GROUP BY query for a sparse table."""
MAX_CACHED_BLOCKS = 1_000_000
"""All jobs' summaries together (about 80 MB); the least recently used go first."""

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """A record table and the columns its charts show (min and max of each per block)."""

    table: Table
    columns: tuple[tuple[str, ColumnElement[Any]], ...]
    dense: bool
    """Nearly every sequence number is a row (steps): one aggregate per block, which
    SQLite answers from the index without sorting. Sparse tables (sharpness, one row per
    tens or thousands of steps): one GROUP BY per chunk of blocks, few rows to sort."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)


def _specs() -> dict[str, TableSpec]:
    steps: Table = StepRow.__table__  # type: ignore[assignment]
    sharp: Table = SharpnessRow.__table__  # type: ignore[assignment]
    return {
        "steps": TableSpec(
            steps,
            (("lr", steps.c.lr), ("loss", steps.c.loss), ("grad_norm", steps.c.grad_norm)),
            dense=True,
        ),
        "sharpness": TableSpec(
            sharp,
            # value·lr: the stability ratio times the threshold's constant (every threshold
            # is c/η, monitor/thresholds.py), so its min/max gives the ratio's.
            (
                ("value", sharp.c.value),
                ("lr", sharp.c.lr),
                ("value_lr", sharp.c.value * sharp.c.lr),
            ),
            dense=False,
        ),
    }


SPECS = _specs()


@dataclasses.dataclass
class RunBlocks:
    """The non-empty blocks of one run of one table, in block order."""

    ids: I64
    count: I64
    step_lo: I64
    step_hi: I64
    mins: F64  # (blocks, columns); NaN where every value was NULL
    maxs: F64
    archived: I64 = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Rows of each block that retention dropped (``step_blocks``); empty: none."""

    def __post_init__(self) -> None:
        if len(self.archived) != len(self.ids):
            self.archived = np.zeros(len(self.ids), dtype=np.int64)

    @classmethod
    def empty(cls, columns: int) -> RunBlocks:
        ints = np.zeros(0, dtype=np.int64)
        floats = np.zeros((0, columns), dtype=np.float64)
        return cls(ints, ints, ints, ints, floats, floats)

    def __len__(self) -> int:
        return len(self.ids)

    def replaced_from(self, first_block: int, new: RunBlocks) -> RunBlocks:
        """These blocks before ``first_block``, then ``new`` (all at or after it). A new
        object: readers holding the old one keep a consistent view."""
        keep = int(np.searchsorted(self.ids, first_block))
        return RunBlocks(
            *(
                np.concatenate([getattr(self, name)[:keep], getattr(new, name)])
                for name in ("ids", "count", "step_lo", "step_hi", "mins", "maxs", "archived")
            )
        )

    @classmethod
    def from_rows(cls, rows: list[Any], columns: int) -> RunBlocks:
        """Rows of (block, count, min step, max step, min c1, max c1, min c2, ...)."""
        if not rows:
            return cls.empty(columns)
        fields = list(zip(*rows, strict=True))
        ids, count, step_lo, step_hi = (np.array(fields[i], dtype=np.int64) for i in range(4))
        values = np.array(fields[4:], dtype=np.float64).T  # NULL -> NaN
        return cls(
            ids,
            count,
            step_lo,
            step_hi,
            mins=np.ascontiguousarray(values[:, 0::2]),
            maxs=np.ascontiguousarray(values[:, 1::2]),
        )


def _aggregates(spec: TableSpec) -> list[ColumnElement[Any]]:
    out: list[ColumnElement[Any]] = [func.count(), func.min(spec.table.c.step)]
    out.append(func.max(spec.table.c.step))
    for _, column in spec.columns:
        out += [func.min(column), func.max(column)]
    return out


class JobSummary:
    """Every run's blocks of one job, for each table in SPECS."""

    def __init__(self, job_pk: int) -> None:
        self.job_pk = job_pk
        self.lock = threading.Lock()
        self.runs: dict[str, dict[int, RunBlocks]] = {name: {} for name in SPECS}
        self.live: dict[str, dict[int, RunBlocks]] = {name: {} for name in SPECS}
        """Summaries of the rows still stored; ``runs`` adds the archived steps."""
        self.archive: dict[int, RunBlocks] = {}
        self.seen_records: int | None = None  # the job's record count at the last refresh
        self.seen_archived: int | None = None  # its archived step rows at the last refresh

    def snapshot(self) -> dict[str, dict[int, RunBlocks]]:
        """Each table's runs as they are now (RunBlocks are replaced, never edited)."""
        with self.lock:
            return {name: dict(runs) for name, runs in self.runs.items()}

    @property
    def blocks(self) -> int:
        return sum(len(b) for runs in self.runs.values() for b in runs.values())

    def refresh(self, store: Store, records: int | None) -> None:
        """Read what is new since the last refresh (nothing when ``records``, the job's
        stored-record count, and the archived rows have not changed). Call with ``lock``
        held."""
        with store.engine.connect() as conn:
            archived = archived_rows(conn, self.job_pk)
            if records is not None and (records, archived) == (
                self.seen_records,
                self.seen_archived,
            ):
                return
            if archived != self.seen_archived:
                # Retention moved rows from the table to the archive: read both afresh.
                self.archive = load_archive(conn, self.job_pk) if archived else {}
                self.live["steps"] = {}
            for name, spec in SPECS.items():
                for run in _runs(conn, spec.table, self.job_pk):
                    blocks = self.live[name].get(run) or RunBlocks.empty(len(spec.columns))
                    self.live[name][run] = self._refresh_run(conn, spec, run, blocks)
        runs = {name: dict(live) for name, live in self.live.items()}
        for run, blocks in self.archive.items():
            runs["steps"][run] = merge_archived(blocks, runs["steps"].get(run))
        self.runs = runs
        self.seen_records, self.seen_archived = records, archived

    def _refresh_run(
        self, conn: Connection, spec: TableSpec, run: int, blocks: RunBlocks
    ) -> RunBlocks:
        t = spec.table
        in_run = (t.c.job_pk == self.job_pk, t.c.run == run)
        last_seq = conn.scalar(select(func.max(t.c.seq)).where(*in_run))
        if last_seq is None:
            return blocks
        if len(blocks):
            first = max(0, int(blocks.ids[-1]) + 1 - TAIL_BLOCKS)
        else:  # from the first row still stored (retention may have dropped the ones before)
            first = int(conn.scalar(select(func.min(t.c.seq)).where(*in_run)) or 0) // BLOCK
        last = int(last_seq) // BLOCK
        rows: list[Any] = []
        if spec.dense:
            query = select(*_aggregates(spec)).where(
                *in_run, t.c.seq >= bindparam("lo"), t.c.seq < bindparam("hi")
            )
            for block in range(first, last + 1):
                row = conn.execute(query, {"lo": block * BLOCK, "hi": (block + 1) * BLOCK}).one()
                if row[0]:
                    rows.append((block, *row))
        else:
            block_of = (t.c.seq // BLOCK).label("block")
            query = (
                select(block_of, *_aggregates(spec))
                .where(*in_run, t.c.seq >= bindparam("lo"), t.c.seq < bindparam("hi"))
                .group_by(block_of)
                .order_by(block_of)
            )
            for chunk in range(first, last + 1, SPARSE_CHUNK):
                bounds = {"lo": chunk * BLOCK, "hi": (chunk + SPARSE_CHUNK) * BLOCK}
                rows += conn.execute(query, bounds).all()
        return blocks.replaced_from(first, RunBlocks.from_rows(rows, len(spec.columns)))


def archived_rows(conn: Connection, job_pk: int) -> int:
    """How many of the job's step rows retention dropped: a summary changes when it does."""
    t = StepBlockRow.__table__
    query = select(func.coalesce(func.sum(t.c["count"]), 0)).where(t.c.job_pk == job_pk)
    return int(conn.scalar(query) or 0)


def load_archive(conn: Connection, job_pk: int) -> dict[int, RunBlocks]:
    """The job's archived blocks by run, in block order."""
    t = StepBlockRow.__table__
    query = (
        select(
            t.c.run, t.c.block, t.c["count"], t.c.step_lo, t.c.step_hi, *(t.c[n] for n in BOUNDS)
        )
        .where(t.c.job_pk == job_pk)
        .order_by(t.c.run, t.c.block)
    )
    by_run: dict[int, list[tuple[object, ...]]] = {}
    for row in conn.execute(query):
        by_run.setdefault(int(row[0]), []).append(tuple(row[1:]))
    out = {}
    for run, rows in by_run.items():
        blocks = RunBlocks.from_rows(rows, len(COLUMNS))
        blocks.archived = blocks.count.copy()
        out[run] = blocks
    return out


def merge_archived(archived: RunBlocks, live: RunBlocks | None) -> RunBlocks:
    """One run's blocks: the archived ones and the live ones, a block in both summed."""
    if live is None or not len(live):
        return archived
    parts = (archived, live)
    ids = np.concatenate([p.ids for p in parts])
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])

    def cat(name: str) -> Any:
        return np.concatenate([getattr(p, name) for p in parts])[order]

    return RunBlocks(
        ids=ids[starts],
        count=np.add.reduceat(cat("count"), starts),
        step_lo=np.minimum.reduceat(cat("step_lo"), starts),
        step_hi=np.maximum.reduceat(cat("step_hi"), starts),
        mins=np.fmin.reduceat(cat("mins"), starts, axis=0),
        maxs=np.fmax.reduceat(cat("maxs"), starts, axis=0),
        archived=np.add.reduceat(cat("archived"), starts),
    )


def _runs(conn: Connection, t: Table, job_pk: int) -> list[int]:
    """The job's runs in this table, one index seek each (no scan of the job's rows)."""
    runs: list[int] = []
    query = select(func.min(t.c.run)).where(t.c.job_pk == job_pk, t.c.run > bindparam("after"))
    after = -1
    while (run := conn.scalar(query, {"after": after})) is not None:
        runs.append(int(run))
        after = int(run)
    return runs


class SeriesCache:
    """The summaries of recently viewed or long jobs, bounded by MAX_CACHED_BLOCKS."""

    def __init__(self, store: Store, max_blocks: int = MAX_CACHED_BLOCKS) -> None:
        self.store = store
        self.max_blocks = max_blocks
        self._lock = threading.Lock()
        self._jobs: collections.OrderedDict[int, JobSummary] = collections.OrderedDict()

    def summary(self, job_pk: int, records: int | None) -> JobSummary:
        """The job's summary, brought up to date (read it through ``snapshot``)."""
        with self._lock:
            summary = self._jobs.get(job_pk)
            if summary is None:
                summary = self._jobs[job_pk] = JobSummary(job_pk)
            self._jobs.move_to_end(job_pk)
        with summary.lock:
            summary.refresh(self.store, records)
        self._evict(keep=job_pk)
        return summary

    def _evict(self, keep: int) -> None:
        with self._lock:
            total = sum(s.blocks for s in self._jobs.values())
            for pk in list(self._jobs):
                if total <= self.max_blocks:
                    break
                if pk != keep:
                    total -= self._jobs.pop(pk).blocks

    def warm(
        self, jobs: Iterable[tuple[int, int | None]], stop: threading.Event | None = None
    ) -> None:
        """Refresh these (job_pk, records), most important first (the background thread
        passes the long jobs, most recently seen first), until ``stop`` is set."""
        for job_pk, records in jobs:
            if stop is not None and stop.is_set():
                return
            self.summary(job_pk, records)
