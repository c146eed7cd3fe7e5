"""Retention: the ``step_blocks`` table (what retention dropped of each job's steps, as
block summaries), and on PostgreSQL the step table partitioned by day of ``wall_time``,
so that a day is dropped as one partition (``server/partitions.py``).

On PostgreSQL the stored steps move into the partitioned table, in this revision's
transaction: the upgrade rewrites the step table once, in time proportional to its size.
Days of the last year that hold steps get their partition, and so do today and the next
days; older steps go to the DEFAULT partition, which retention trims by rows.

Written out here, not taken from ``partitions.py``, so that it stays what it was.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import datetime
import time

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DAY = 86_400
AHEAD_DAYS = 7
PAST_DAYS = 366


def _name(day: int) -> str:
    return "steps_p" + datetime.datetime.fromtimestamp(day * DAY, datetime.timezone.utc).strftime(
        "%Y%m%d"
    )


def upgrade() -> None:
    op.create_table(
        "step_blocks",
        sa.Column("job_pk", sa.Integer(), sa.ForeignKey("jobs.pk"), nullable=False),
        sa.Column("run", sa.BigInteger(), nullable=False),
        sa.Column("block", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("step_lo", sa.BigInteger(), nullable=False),
        sa.Column("step_hi", sa.BigInteger(), nullable=False),
        *(
            sa.Column(f"{name}_{end}", sa.Float(), nullable=True)
            for name in ("lr", "loss", "grad_norm")
            for end in ("min", "max")
        ),
        sa.PrimaryKeyConstraint("job_pk", "run", "block"),
        sqlite_with_rowid=False,
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    conn = op.get_bind()
    op.execute("ALTER TABLE steps RENAME TO steps_0002")
    op.execute("ALTER TABLE steps_0002 RENAME CONSTRAINT steps_pkey TO steps_0002_pkey")
    op.execute(
        "CREATE TABLE steps (LIKE steps_0002 INCLUDING DEFAULTS) PARTITION BY RANGE (wall_time)"
    )
    # A partitioned table's key must hold the partition key (tables.py).
    op.execute(
        "ALTER TABLE steps ADD CONSTRAINT steps_pkey PRIMARY KEY (job_pk, run, seq, wall_time)"
    )
    op.execute(
        "ALTER TABLE steps ADD CONSTRAINT steps_job_pk_fkey FOREIGN KEY (job_pk) "
        "REFERENCES jobs (pk)"
    )
    op.execute("CREATE TABLE steps_default PARTITION OF steps DEFAULT")
    today = int(time.time() // DAY)
    stored = conn.execute(
        sa.text(
            "SELECT DISTINCT floor(wall_time / :day)::bigint FROM steps_0002 "
            "WHERE wall_time >= :since AND wall_time < :until"
        ),
        {"day": DAY, "since": (today - PAST_DAYS) * DAY, "until": (today + 1) * DAY},
    ).scalars()
    for day in sorted({*stored, *range(today, today + AHEAD_DAYS + 1)}):
        op.execute(
            f"CREATE TABLE {_name(day)} PARTITION OF steps "
            f"FOR VALUES FROM ({day * DAY}) TO ({(day + 1) * DAY})"
        )
    op.execute("INSERT INTO steps SELECT * FROM steps_0002")
    op.execute("DROP TABLE steps_0002")


def downgrade() -> None:
    op.drop_table("step_blocks")
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE steps RENAME TO steps_0003")
    op.execute("ALTER TABLE steps_0003 RENAME CONSTRAINT steps_pkey TO steps_0003_pkey")
    op.execute("CREATE TABLE steps (LIKE steps_0003 INCLUDING DEFAULTS)")
    op.execute("ALTER TABLE steps ADD CONSTRAINT steps_pkey PRIMARY KEY (job_pk, run, seq)")
    op.execute(
        "ALTER TABLE steps ADD CONSTRAINT steps_job_pk_fkey FOREIGN KEY (job_pk) "
        "REFERENCES jobs (pk)"
    )
    op.execute("INSERT INTO steps SELECT * FROM steps_0003 ON CONFLICT DO NOTHING")
    op.execute("DROP TABLE steps_0003")
