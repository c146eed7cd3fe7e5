"""Storage through SQLAlchemy 2: SQLite by default, PostgreSQL through the same code.

Writes come in one transaction per commit interval (see ``ingest.py``): the daemon
acknowledges a frame only after the transaction holding it has committed, so an
acknowledged record survives a daemon killed right after. On SQLite the database runs
in WAL mode with ``synchronous=NORMAL``: a commit survives the death of the process
(the case the daemon guards against); only a power cut may lose the last commits.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from sqlalchemy import Connection, Engine, create_engine, event, func, select, update
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from edgewatch.errors import ConfigError
from edgewatch.schemas import CRITICAL_METHOD, JobEnd, JobStart
from edgewatch.server.bulk import BulkInsert
from edgewatch.server.tables import (
    INSERT_COLUMNS,
    RECORD_TABLES,
    AlertRow,
    Base,
    JobRow,
    PlanRow,
    SharpnessRow,
    StepRow,
)
from edgewatch.server.upgrade import upgrade

if TYPE_CHECKING:
    from edgewatch.server.pgcopy import CopyInsert

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FrameWrite:
    """The rows of one accepted frame, as tuples in ``INSERT_COLUMNS`` order."""

    job_pk: int
    steps: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    sharpness: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    events: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    plans: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    alerts: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    """The daemon's own rows: state changes the frame's records caused."""
    end: JobEnd | None = None
    stored: int = 0  # filled in by Store.write

    @property
    def rows(self) -> int:
        return len(self.steps) + len(self.sharpness) + len(self.events) + len(self.plans)


@dataclasses.dataclass
class JobProgress:
    """What a commit changes on a job's row."""

    job_pk: int
    last_seen: float
    last_step: int | None
    last_loss: float | None
    dropped: int


class Claim(Protocol):
    """What claiming a commit's jobs found (``ownership.py``): the jobs whose lease this
    daemon holds, whose alerts it may write; ``apply()`` once the transaction committed."""

    @property
    def held(self) -> Collection[int]: ...
    def apply(self) -> None: ...


class Claims(Protocol):
    """Claims the jobs of a commit inside its transaction, before its rows are written
    (``checkpoints``: whether analyses may be checkpointed with them)."""

    def __call__(self, conn: Connection, job_pks: set[int], checkpoints: bool = True) -> Claim: ...


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create the engine, with a clear error for URLs SQLAlchemy cannot use."""
    try:
        engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigError(
            f"cannot use database URL {url!r}: {exc}. Use sqlite:///edgewatch.db or "
            "postgresql+psycopg://user@host/dbname"
        ) from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    elif engine.dialect.name != "postgresql":
        raise ConfigError(
            f"database {engine.dialect.name!r} is not supported; use SQLite or PostgreSQL"
        )
    return engine


class Store:
    """Every read and write of the daemon's database."""

    def __init__(self, url: str, *, copy: bool = True) -> None:
        """``copy``: on PostgreSQL, write step rows with COPY (``pgcopy.py``); False
        keeps them on the ``INSERT ... unnest`` path of the other tables."""
        self.url = url
        self.engine = make_engine(url)
        try:
            upgrade(self.engine)  # migrations, under a lock where daemons share a database
        except OperationalError as exc:
            raise ConfigError(f"cannot open database {self.engine.url!r}: {exc.orig}") from exc
        # ON CONFLICT DO NOTHING makes a resent record a no-op (see bulk.py).
        self._insert = {
            name: BulkInsert(Base.metadata.tables[name], columns, self.engine.dialect)
            for name, columns in INSERT_COLUMNS.items()
        }
        self._copy_steps: CopyInsert | None = None
        if copy and self.engine.dialect.name == "postgresql":
            from edgewatch.server.pgcopy import CopyInsert  # psycopg: PostgreSQL only

            self._copy_steps = CopyInsert(Base.metadata.tables["steps"], INSERT_COLUMNS["steps"])

    def close(self) -> None:
        self.engine.dispose()

    # -- writes -----------------------------------------------------------------------

    def upsert_job(self, start: JobStart) -> dict[str, Any]:
        """Create the job, or start a new run of it; returns the job row as a dict."""
        values = {
            "status": "running",
            "run": start.run,
            "optimizer": msgspec.to_builtins(start.optimizer),
            "rank": start.rank,
            "world_size": start.world_size,
            "host": start.host,
            "pid": start.pid,
            "client_version": start.client_version,
            "torch_version": start.torch_version,
            "total_steps": start.total_steps,
            "budget": start.budget,
            "preflight": start.preflight,
            "started_at": start.wall_time,
            "ended_at": None,
            "last_seen": start.wall_time,
        }
        with self.engine.begin() as conn:
            pk = conn.scalar(select(JobRow.pk).where(JobRow.job_id == start.job))
            if pk is None:
                pk = conn.scalar(
                    JobRow.__table__.insert()  # type: ignore[attr-defined]
                    .values(job_id=start.job, records=0, dropped=0, **values)
                    .returning(JobRow.pk)
                )
            else:
                conn.execute(update(JobRow).where(JobRow.pk == pk).values(**values))
            row = conn.execute(select(JobRow.__table__).where(JobRow.pk == pk)).one()
        return dict(row._mapping)

    def write(
        self,
        frames: Sequence[FrameWrite],
        progress: Iterable[JobProgress],
        claims: Claims | None = None,
        checkpoints: bool = True,
    ) -> None:
        """Insert the frames' rows and update the jobs, all in one transaction; with
        ``claims``, the jobs' leases are claimed first, in it, and only the jobs held get
        their alerts written (the analysis of the others is another daemon's).

        Sets ``frame.stored`` to the number of rows that were new (the rest were
        duplicates of rows stored before).
        """
        with self.engine.begin() as conn:
            pks = {f.job_pk for f in frames}
            claim = None if claims is None else claims(conn, pks, checkpoints)
            stored_by_job: dict[int, int] = {}
            tables: tuple[str, ...] = RECORD_TABLES
            copied = [0] * len(frames)
            if self._copy_steps is not None:  # every frame's steps in one COPY
                copied = self._copy_steps(conn, [frame.steps for frame in frames])
                tables = tuple(name for name in RECORD_TABLES if name != "steps")
            for frame, stored in zip(frames, copied, strict=True):
                frame.stored = stored
                for name in tables:
                    frame.stored += self._insert[name](conn, getattr(frame, name))
                if claim is None or frame.job_pk in claim.held:
                    self._insert["alerts"](conn, frame.alerts)
                stored_by_job[frame.job_pk] = stored_by_job.get(frame.job_pk, 0) + frame.stored
                if frame.end is not None:
                    conn.execute(
                        update(JobRow)
                        .where(JobRow.pk == frame.job_pk)
                        .values(status=frame.end.status, ended_at=frame.end.wall_time)
                    )
            for p in progress:
                conn.execute(
                    update(JobRow)
                    .where(JobRow.pk == p.job_pk)
                    .values(
                        records=JobRow.records + stored_by_job.get(p.job_pk, 0),
                        last_seen=func.max(JobRow.last_seen, p.last_seen)
                        if self.engine.dialect.name == "sqlite"
                        else func.greatest(JobRow.last_seen, p.last_seen),
                        last_step=p.last_step if p.last_step is not None else JobRow.last_step,
                        last_loss=p.last_loss if p.last_step is not None else JobRow.last_loss,
                        dropped=p.dropped,
                    )
                )
        if claim is not None:
            claim.apply()

    def add_alerts(self, rows: list[tuple[Any, ...]]) -> None:
        """Alerts found again by a rebuilt analysis; those already stored are no-ops."""
        if rows:
            with self.engine.begin() as conn:
                self._insert["alerts"](conn, rows)

    # -- reads ------------------------------------------------------------------------

    def jobs(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(JobRow.__table__).order_by(JobRow.pk)).all()
        return [dict(r._mapping) for r in rows]

    def job(self, job_id: str) -> dict[str, Any] | None:
        """One job's row, or None."""
        query = select(JobRow.__table__).where(JobRow.job_id == job_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else dict(row._mapping)

    def steps(
        self, job_pk: int, start: int | None = None, end: int | None = None, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        """Step records of a job with ``start <= step <= end``, in step order."""
        return self._step_range(StepRow.__table__, job_pk, start, end, limit)

    def sharpness(
        self, job_pk: int, start: int | None = None, end: int | None = None, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        """Sharpness estimates of a job with ``start <= step <= end``, in step order."""
        return self._step_range(SharpnessRow.__table__, job_pk, start, end, limit)

    def _step_range(
        self, t: Any, job_pk: int, start: int | None, end: int | None, limit: int
    ) -> list[dict[str, Any]]:
        query = select(t).where(t.c.job_pk == job_pk)
        if start is not None:
            query = query.where(t.c.step >= start)
        if end is not None:
            query = query.where(t.c.step <= end)
        query = query.order_by(t.c.step, t.c.run, t.c.seq).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def alerts(self, job_pk: int, limit: int = 10_000) -> list[dict[str, Any]]:
        """The job's alerts (every run), in the order they were raised."""
        t = AlertRow.__table__
        query = select(t).where(t.c.job_pk == job_pk).order_by(t.c.wall_time, t.c.run, t.c.seq)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query.limit(limit))]

    def curvature_spent(self, job_pk: int, run: int) -> tuple[int, float]:
        """What a run got from its curvature budget: its λ_max estimates (a critical
        sharpness is not one) and the seconds the client spent on them. The page says
        it next to the budget, so that one estimate is explained, not a dot."""
        t = SharpnessRow.__table__
        query = select(func.count(), func.sum(t.c.seconds)).where(
            t.c.job_pk == job_pk, t.c.run == run, t.c.method != CRITICAL_METHOD
        )
        with self.engine.connect() as conn:
            count, seconds = conn.execute(query).one()
        return int(count or 0), float(seconds or 0.0)

    def last_alerts(self) -> dict[int, dict[str, Any]]:
        """Each job's latest alert of its current run, by job pk: a finished job's final
        state, which the daemon shows after a restart without replaying the job."""
        a, j = AlertRow.__table__, JobRow.__table__
        newest = (
            select(a.c.job_pk, func.max(a.c.seq).label("seq"))
            .join(j, (j.c.pk == a.c.job_pk) & (j.c.run == a.c.run))
            .group_by(a.c.job_pk)
            .subquery()
        )
        query = (
            select(a)
            .join(newest, (a.c.job_pk == newest.c.job_pk) & (a.c.seq == newest.c.seq))
            .join(j, (j.c.pk == a.c.job_pk) & (j.c.run == a.c.run))
        )
        with self.engine.connect() as conn:
            return {r.job_pk: dict(r._mapping) for r in conn.execute(query)}

    def last_readings(
        self, job_pk: int, run: int
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The newest step and the newest estimate of λ_max (not a critical sharpness) of
        one run: what a finished job showed last, restored after a restart without replay.
        Both by the primary key, newest sequence number first."""
        found: list[dict[str, Any] | None] = []
        with self.engine.connect() as conn:
            for t in (StepRow.__table__, SharpnessRow.__table__):
                query = select(t).where(t.c.job_pk == job_pk, t.c.run == run)
                if t is SharpnessRow.__table__:
                    query = query.where(t.c.method != CRITICAL_METHOD)
                row = conn.execute(query.order_by(t.c.seq.desc()).limit(1)).first()
                found.append(None if row is None else dict(row._mapping))
        return found[0], found[1]

    def has_run(self, job_pk: int, run: int) -> bool:
        """Whether any record of this run is stored (one seek per record table's key)."""
        with self.engine.connect() as conn:
            for name in RECORD_TABLES:
                t = Base.metadata.tables[name]
                query = select(t.c.seq).where(t.c.job_pk == job_pk, t.c.run == run).limit(1)
                if conn.execute(query).first() is not None:
                    return True
        return False

    def had_plan(self, job_pk: int, run: int) -> bool:
        """Whether the run sent an LR plan (a finished job's ``planned_lr`` after restart)."""
        t = PlanRow.__table__
        query = select(t.c.seq).where(t.c.job_pk == job_pk, t.c.run == run)
        with self.engine.connect() as conn:
            return conn.execute(query.limit(1)).first() is not None

    def latest_plan(self, job_pk: int, run: int) -> dict[str, Any] | None:
        """The newest LR plan the run sent (a ``plans`` row), or None."""
        t = PlanRow.__table__
        query = select(t).where(t.c.job_pk == job_pk, t.c.run == run).order_by(t.c.seq.desc())
        with self.engine.connect() as conn:
            row = conn.execute(query.limit(1)).first()
        return None if row is None else dict(row._mapping)

    def run_records(
        self, job_pk: int, run: int, after: int = 0
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every stored record of one run with a sequence number over ``after`` as (table,
        row), in the client's sequence order: what the analysis saw live, for ``replay``
        and for rebuilding after a restart (from a checkpoint: ``after`` is its ``seq``)."""
        streams = []
        with self.engine.connect() as conn:
            for name in RECORD_TABLES:
                table = Base.metadata.tables[name]
                query = (
                    select(table)
                    .where(table.c.job_pk == job_pk, table.c.run == run, table.c.seq > after)
                    .order_by(table.c.seq)
                )
                rows = conn.execution_options(yield_per=5000).execute(query)
                streams.append(_tagged(name, rows))
            for _, name, row in heapq.merge(*streams, key=lambda item: item[0]):
                yield name, row

    def count(self, table: str, job_pk: int | None = None) -> int:
        t = Base.metadata.tables[table]
        query = select(func.count()).select_from(t)
        if job_pk is not None:
            query = query.where(t.c.job_pk == job_pk)
        with self.engine.connect() as conn:
            return int(conn.scalar(query) or 0)

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.scalar(select(1))
            return True
        except Exception:
            return False


def _tagged(table: str, rows: Iterable[Any]) -> Iterator[tuple[int, str, dict[str, Any]]]:
    for r in rows:
        yield r.seq, table, dict(r._mapping)
