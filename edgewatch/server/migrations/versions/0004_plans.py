"""LR plans in a table of their own (``plans``: the ``schemas.Plan`` record's fields),
where they were events of kind ``lr_plan`` whose detail held the knots as JSON. The
stored ones move over in this revision's transaction, with their delivery key, so that
a resend of one is still a duplicate; a detail that does not read as a plan stays an
event.

Written out here, not taken from ``tables.py``, so that it stays what it was.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PLAN_EVENT = "lr_plan"
JSON = sa.JSON(none_as_null=True)


def upgrade() -> None:
    plans = op.create_table(
        "plans",
        sa.Column("steps", JSON, nullable=False),
        sa.Column("lrs", JSON, nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("job_pk", sa.Integer(), sa.ForeignKey("jobs.pk"), nullable=False),
        sa.Column("run", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("wall_time", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("job_pk", "run", "seq"),
        sqlite_with_rowid=False,
    )
    conn = op.get_bind()
    events = sa.table(
        "events",
        *(sa.column(name) for name in ("job_pk", "run", "seq", "step", "wall_time", "kind")),
        sa.column("detail"),
    )
    moved = []
    for row in conn.execute(sa.select(events).where(events.c.kind == PLAN_EVENT)):
        try:
            knots = json.loads(row.detail)
            steps, lrs = [int(s) for s in knots["steps"]], [float(x) for x in knots["lrs"]]
        except (ValueError, KeyError, TypeError):
            continue
        key = {"job_pk": row.job_pk, "run": row.run, "seq": row.seq}
        source = str(knots.get("source", ""))[:64]
        moved.append(key | {"step": row.step, "wall_time": row.wall_time, "steps": steps,
                            "lrs": lrs, "source": source})  # fmt: skip
    if moved:
        op.bulk_insert(plans, moved)
        for key in moved:
            conn.execute(
                sa.delete(events).where(
                    events.c.job_pk == key["job_pk"],
                    events.c.run == key["run"],
                    events.c.seq == key["seq"],
                )
            )


def downgrade() -> None:
    conn = op.get_bind()
    plans = sa.table("plans", *(sa.column(n) for n in ("job_pk", "run", "seq", "step")),
                     sa.column("wall_time"), sa.column("steps", JSON), sa.column("lrs", JSON),
                     sa.column("source"))  # fmt: skip
    events = sa.table("events", *(sa.column(n) for n in ("job_pk", "run", "seq", "step")),
                      sa.column("wall_time"), sa.column("kind"), sa.column("detail"))  # fmt: skip
    for row in conn.execute(sa.select(plans)):
        detail = json.dumps({"steps": row.steps, "lrs": row.lrs, "source": row.source})
        conn.execute(
            sa.insert(events).values(job_pk=row.job_pk, run=row.run, seq=row.seq, step=row.step,
                                     wall_time=row.wall_time, kind=PLAN_EVENT, detail=detail)
        )  # fmt: skip
    op.drop_table("plans")
