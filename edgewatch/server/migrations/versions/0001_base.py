"""The schema as it was when migrations began (edgewatch 0.1, before Alembic).

Written out here, not taken from ``tables.py``, so that it stays what it was when
``tables.py`` moves on. A database made by ``create_all`` before Alembic has these
tables already; ``server/upgrade.py`` stamps it with this revision instead of running it.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON(none_as_null=True)


def _record_key() -> list[Any]:
    """(job, run, seq): the delivery key of every record table, and its step and time."""
    return [
        sa.Column("job_pk", sa.Integer(), sa.ForeignKey("jobs.pk"), nullable=False),
        sa.Column("run", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("wall_time", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("job_pk", "run", "seq"),
    ]


def _nullable(kind: sa.types.TypeEngine[Any], *names: str) -> list[Any]:
    return [sa.Column(name, kind, nullable=True) for name in names]


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("run", sa.BigInteger(), nullable=False),
        sa.Column("optimizer", JSON, nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("world_size", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.BigInteger(), nullable=True),
        sa.Column("client_version", sa.String(length=64), nullable=False),
        sa.Column("torch_version", sa.String(length=64), nullable=False),
        sa.Column("total_steps", sa.BigInteger(), nullable=True),
        sa.Column("budget", sa.Float(), nullable=False),
        sa.Column("preflight", JSON, nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("last_step", sa.BigInteger(), nullable=True),
        sa.Column("last_loss", sa.Float(), nullable=True),
        sa.Column("records", sa.BigInteger(), nullable=False),
        sa.Column("dropped", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("job_id"),
    )
    op.create_table(
        "alerts",
        sa.Column("state", sa.String(length=16), nullable=False),
        *_nullable(sa.Float(), "steps_to_instability", "steps_low", "steps_high", "ratio"),
        sa.Column("recommended_lr", sa.Float(), nullable=True),
        sa.Column("recommended_warmup_steps", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("resume_step", sa.BigInteger(), nullable=True),
        *_record_key(),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "events",
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        *_record_key(),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "sharpness",
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("preconditioned", sa.Boolean(), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("matvecs", sa.Integer(), nullable=False),
        sa.Column("residual", sa.Float(), nullable=True),
        sa.Column("probe_batch", sa.Integer(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        *_nullable(sa.Float(), "lr", "update_curvature", "eta_max"),
        *_record_key(),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "steps",
        sa.Column("lr", sa.Float(), nullable=False),
        sa.Column("group_lrs", JSON, nullable=True),
        *_nullable(sa.Float(), "loss", "grad_norm", "update_norm", "loss_scale"),
        sa.Column("tokens", sa.BigInteger(), nullable=True),
        sa.Column("moment_ratio", sa.Float(), nullable=True),
        *_record_key(),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    for table in ("steps", "sharpness", "events", "alerts", "jobs"):
        op.drop_table(table)
