"""What retention dropped of each job's steps, kept as block summaries (``step_blocks``).

The web page charts a job from per-block summaries (``blocks.py``: count, step range, min
and max of lr, loss and grad norm over 256 sequence numbers). Before retention drops step
rows it adds their summary to ``step_blocks``, in the same transaction as the drop; a
block whose rows go in several passes (a block that spans midnight) adds up. The rows
still stored are summarised live, as before, and ``blocks.py`` merges the two: the
archive holds exactly the rows that are gone, so nothing is counted twice.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

BLOCK = 256
"""Sequence numbers per block, as in ``blocks.py`` (which takes it from here)."""

COLUMNS = ("lr", "loss", "grad_norm")
"""The step columns the charts show, as ``SPECS["steps"]`` in ``blocks.py`` has them."""
BOUNDS = tuple(f"{c}_{end}" for c in COLUMNS for end in ("min", "max"))
_TARGET = ("job_pk", "run", "block", "count", "step_lo", "step_hi", *BOUNDS)


def aggregate_sql(source: str, where: str) -> str:
    """One summary row per (job, run, block) of the rows of ``source`` matching ``where``."""
    values = ", ".join(f"{agg}({c})" for c in COLUMNS for agg in ("min", "max"))
    return (
        f"SELECT job_pk, run, seq / {BLOCK} AS block, count(*) AS count, min(step), "
        f"max(step), {values} FROM {source} WHERE {where} GROUP BY job_pk, run, seq / {BLOCK}"
    )


def upsert_sql(dialect: str, select_sql: str) -> str:
    """Add the summary rows of ``select_sql`` to ``step_blocks``, merged into a block's
    earlier summary where there is one."""

    def least(a: str, b: str, op: str) -> str:
        if dialect == "postgresql":  # LEAST and GREATEST skip NULLs
            return f"{'least' if op == 'min' else 'greatest'}({a}, {b})"
        # SQLite's two-argument min/max return NULL when either is NULL
        return f"{op}(coalesce({a}, {b}), coalesce({b}, {a}))"

    updates = ["count = step_blocks.count + excluded.count"]
    updates.append(f"step_lo = {least('step_blocks.step_lo', 'excluded.step_lo', 'min')}")
    updates.append(f"step_hi = {least('step_blocks.step_hi', 'excluded.step_hi', 'max')}")
    for name in BOUNDS:
        op = name.rsplit("_", 1)[1]
        updates.append(f"{name} = {least(f'step_blocks.{name}', f'excluded.{name}', op)}")
    return (
        f"INSERT INTO step_blocks ({', '.join(_TARGET)}) {select_sql} "
        f"ON CONFLICT (job_pk, run, block) DO UPDATE SET {', '.join(updates)}"
    )


def archive_and_delete_pg(conn: Connection, source: str, where: str) -> int:
    """PostgreSQL: delete the rows of ``source`` matching ``where`` and archive them, in
    one statement; returns the rows deleted."""
    columns = "job_pk, run, seq, step, " + ", ".join(COLUMNS)
    sql = (
        f"WITH gone AS (DELETE FROM {source} WHERE {where} RETURNING {columns}), "
        f"summary AS ({aggregate_sql('gone', 'true')}), "
        f"added AS ({upsert_sql('postgresql', 'SELECT * FROM summary')}) "
        "SELECT coalesce(sum(count), 0) FROM summary"
    )
    return int(conn.execute(text(sql)).scalar_one())


def archive_pg(conn: Connection, source: str) -> int:
    """PostgreSQL: archive every row of ``source`` (a retired partition, dropped next);
    returns how many rows it held."""
    sql = (
        f"WITH summary AS ({aggregate_sql(source, 'true')}), "
        f"added AS ({upsert_sql('postgresql', 'SELECT * FROM summary')}) "
        "SELECT coalesce(sum(count), 0) FROM summary"
    )
    return int(conn.execute(text(sql)).scalar_one())
