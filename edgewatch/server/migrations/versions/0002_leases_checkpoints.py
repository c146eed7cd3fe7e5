"""Several daemons on one database: a lease per job (who analyses it) and a checkpoint of
each job's analysis (what a restart or a takeover starts from).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("job_pk", sa.Integer(), sa.ForeignKey("jobs.pk"), nullable=False),
        sa.Column("owner", sa.String(length=300), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("job_pk"),
    )
    op.create_table(
        "checkpoints",
        sa.Column("job_pk", sa.Integer(), sa.ForeignKey("jobs.pk"), nullable=False),
        sa.Column("run", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("format", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("written_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("job_pk"),
    )


def downgrade() -> None:
    op.drop_table("checkpoints")
    op.drop_table("leases")
