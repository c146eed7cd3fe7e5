"""Storage through SQLAlchemy 2: SQLite by default, PostgreSQL through the same code.

Writes come in one transaction per commit interval (see ``ingest.py``): the daemon
acknowledges a frame only after the transaction holding it has committed, so an
acknowledged record survives a daemon killed right after. On SQLite the database runs
in WAL mode with ``synchronous=NORMAL``: a commit survives the death of the process
(the case the daemon guards against); only a power cut may lose the last commits.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from sqlalchemy import Connection, Engine, create_engine, event, func, select, update
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from edgewatch.errors import ConfigError
from edgewatch.schemas import JobEnd, JobStart
from edgewatch.server.bulk import BulkInsert
from edgewatch.server.reads import Reads
from edgewatch.server.tables import (
    INSERT_COLUMNS,
    RECORD_TABLES,
    Base,
    JobRow,
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


class Store(Reads):
    """The daemon's database: its writes here, its reads in ``Reads`` (``reads.py``)."""

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

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.scalar(select(1))
            return True
        except Exception:
            return False
