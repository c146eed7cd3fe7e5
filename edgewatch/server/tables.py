"""The database schema (SQLAlchemy 2.0 declarative), one code path for SQLite and PostgreSQL.

Record tables are keyed by (job, run, seq): the client's delivery key, so that a
resent record is a conflict the insert ignores, never a second row. On SQLite they
are WITHOUT ROWID tables, so that key is the only B-tree an insert has to update.

On PostgreSQL the step table is partitioned by day of ``wall_time`` (revision 0003,
``server/partitions.py``), and a partitioned table's primary key must hold the partition
key: there it is (job, run, seq, wall_time). A resent record carries the wall time it was
sent with, so it meets its stored copy in the same partition and is still a conflict.

The schema is made and changed by the Alembic revisions in ``migrations/versions/``
(run by ``upgrade.py`` at start): a change here goes with a new revision there.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON as _JSON
from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from edgewatch.schemas import Event, Plan, Record, Sharpness, Step

JOB_ID_MAX = 200

# A Python None is SQL NULL, not the JSON text 'null'.
JSON = _JSON(none_as_null=True)


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(JOB_ID_MAX), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="running")
    run: Mapped[int] = mapped_column(BigInteger)
    optimizer: Mapped[dict[str, Any]] = mapped_column(JSON)
    rank: Mapped[int] = mapped_column(Integer, default=0)
    world_size: Mapped[int] = mapped_column(Integer, default=1)
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """With ``host`` and ``started_at``, which process the current run is (a JobStart of
    the same run from another process is refused: ``server/ingest.py``)."""
    client_version: Mapped[str] = mapped_column(String(64), default="")
    torch_version: Mapped[str] = mapped_column(String(64), default="")
    total_steps: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    budget: Mapped[float] = mapped_column(Float, default=0.02)
    preflight: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The pre-flight report sent with the run's JobStart (README, "Pre-flight")."""
    started_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_seen: Mapped[float] = mapped_column(Float)
    last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    records: Mapped[int] = mapped_column(BigInteger, default=0)
    dropped: Mapped[int] = mapped_column(BigInteger, default=0)


class _RecordKey:
    """(job, run, seq): the delivery key shared by every record table."""

    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.pk"), primary_key=True)
    run: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger)
    wall_time: Mapped[float] = mapped_column(Float)


_WITHOUT_ROWID = {"sqlite_with_rowid": False}


class StepRow(_RecordKey, Base):
    __tablename__ = "steps"
    __table_args__ = _WITHOUT_ROWID

    lr: Mapped[float] = mapped_column(Float)
    group_lrs: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)
    # SQLite stores NaN as NULL: a NULL loss next to a nonfinite_loss event is a NaN.
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    grad_norm: Mapped[float | None] = mapped_column(Float, nullable=True)
    update_norm: Mapped[float | None] = mapped_column(Float, nullable=True)
    loss_scale: Mapped[float | None] = mapped_column(Float, nullable=True)
    tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    moment_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)


class SharpnessRow(_RecordKey, Base):
    __tablename__ = "sharpness"
    __table_args__ = _WITHOUT_ROWID

    value: Mapped[float] = mapped_column(Float)
    preconditioned: Mapped[bool] = mapped_column(Boolean, default=False)
    method: Mapped[str] = mapped_column(String(32))
    matvecs: Mapped[int] = mapped_column(Integer, default=0)
    residual: Mapped[float | None] = mapped_column(Float, nullable=True)
    probe_batch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    lr: Mapped[float | None] = mapped_column(Float, nullable=True)
    update_curvature: Mapped[float | None] = mapped_column(Float, nullable=True)
    eta_max: Mapped[float | None] = mapped_column(Float, nullable=True)


class EventRow(_RecordKey, Base):
    __tablename__ = "events"
    __table_args__ = _WITHOUT_ROWID

    kind: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")


class PlanRow(_RecordKey, Base):
    """An LR plan the client sent (``schemas.Plan``): knots, straight lines between them;
    the newest of a run replaces the others."""

    __tablename__ = "plans"
    __table_args__ = _WITHOUT_ROWID

    steps: Mapped[list[int]] = mapped_column(JSON)
    lrs: Mapped[list[float]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(64), default="")


class AlertRow(_RecordKey, Base):
    """A change of a job's forecast state; ``seq`` numbers the run's alerts from 1, so that
    an analysis rebuilt after a restart writes the alerts it finds again as no-ops."""

    __tablename__ = "alerts"
    __table_args__ = _WITHOUT_ROWID

    state: Mapped[str] = mapped_column(String(16))
    steps_to_instability: Mapped[float | None] = mapped_column(Float, nullable=True)
    steps_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    steps_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    recommended_lr: Mapped[float | None] = mapped_column(Float, nullable=True)
    recommended_warmup_steps: Mapped[int] = mapped_column(BigInteger, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    resume_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class StepBlockRow(Base):
    """What retention dropped of a job's steps, in the blocks of 256 sequence numbers that
    the web page's charts read (``server/blocks.py``): each block's count, step range and
    the min and max of each charted column over its rows that are gone. The rows still
    stored are summarised live and merged with this (``server/archive.py``)."""

    __tablename__ = "step_blocks"
    __table_args__ = _WITHOUT_ROWID

    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.pk"), primary_key=True)
    run: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    block: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    step_lo: Mapped[int] = mapped_column(BigInteger)
    step_hi: Mapped[int] = mapped_column(BigInteger)
    lr_min: Mapped[float | None] = mapped_column(Float, nullable=True)
    lr_max: Mapped[float | None] = mapped_column(Float, nullable=True)
    loss_min: Mapped[float | None] = mapped_column(Float, nullable=True)
    loss_max: Mapped[float | None] = mapped_column(Float, nullable=True)
    grad_norm_min: Mapped[float | None] = mapped_column(Float, nullable=True)
    grad_norm_max: Mapped[float | None] = mapped_column(Float, nullable=True)


class LeaseRow(Base):
    """Which daemon analyses a job now (DESIGN.md, "Scaling out"; ``server/leases.py``).

    ``owner`` holds it until ``expires_at`` (the database's clock, seconds since the epoch),
    renewed by each commit of the job's records; ``generation`` changes whenever another
    daemon takes the job or stores records of it, so the holder knows its analysis missed
    something and rebuilds it."""

    __tablename__ = "leases"

    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.pk"), primary_key=True)
    owner: Mapped[str] = mapped_column(String(300), default="")
    expires_at: Mapped[float] = mapped_column(Float, default=0.0)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)


class CheckpointRow(Base):
    """A job's analysis after the records up to ``seq`` of ``run`` (``server/checkpoint.py``):
    a restart or a takeover replays only the records after it."""

    __tablename__ = "checkpoints"

    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.pk"), primary_key=True)
    run: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(64))
    state: Mapped[bytes] = mapped_column(LargeBinary)
    written_at: Mapped[float] = mapped_column(Float)


FRAME_FIELDS = ("protocol", "job")
"""A wire record's first fields, which its frame settles: not stored in its row (the job
is the row's ``job_pk``)."""


def record_columns(kind: type[Record]) -> tuple[str, ...]:
    """The columns of a client record's table, in the order of the tuples the ingest
    path builds for the bulk inserts (``server/rows.py``): the job's key, then the wire
    Struct's own fields as it declares them. A field added to the Struct is a column of
    its table (and a migration), nothing else here."""
    fields = kind.__struct_fields__
    assert fields[: len(FRAME_FIELDS)] == FRAME_FIELDS, fields
    return ("job_pk", *fields[len(FRAME_FIELDS) :])


KEY_COLUMNS = ("job_pk", "run", "seq", "step", "wall_time")
INSERT_COLUMNS: dict[str, tuple[str, ...]] = {
    "steps": record_columns(Step),
    "sharpness": record_columns(Sharpness),
    "events": record_columns(Event),
    "plans": record_columns(Plan),
    "alerts": (
        *KEY_COLUMNS,
        *("state", "steps_to_instability", "steps_low", "steps_high", "ratio"),
        *("recommended_lr", "recommended_warmup_steps", "reason", "resume_step"),
    ),
}
RECORD_TABLES = ("steps", "sharpness", "events", "plans")
"""Tables of client records; ``alerts`` are the daemon's own and not counted as records."""
