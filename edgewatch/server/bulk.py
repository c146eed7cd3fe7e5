"""Bulk inserts that ignore duplicates and count exactly what they stored.

The ingest path is the daemon's hot loop, so it skips SQLAlchemy's per-row parameter
processing and hands tuples to the driver through ``Connection.exec_driver_sql``; the
SQL text itself still comes from SQLAlchemy's compiler for the dialect in use. Measured
on 2 cores (bench/RESULTS.md): Core ``execute(insert, dicts)`` ~130k rows/s into SQLite,
driver-level executemany of the same insert ~350k rows/s.

- SQLite: ``executemany`` of ``INSERT ... ON CONFLICT DO NOTHING``; sqlite3 sums the
  rows each execution inserted, so ``rowcount`` is the number stored.
- PostgreSQL: psycopg's ``executemany`` reports ``rowcount`` -1, which would hide how
  many records were duplicates; one ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT
  DO NOTHING`` per call reports it exactly and runs faster than executemany.
  Step rows, nearly every record, go through COPY instead (``pgcopy.py``) unless the
  ``pg_copy`` setting is off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection, Dialect


class BulkInsert:
    """``insert(conn, rows)`` for one table and one dialect; returns rows stored."""

    def __init__(self, table: Table, columns: Sequence[str], dialect: Dialect) -> None:
        self.columns = tuple(columns)
        self.postgres = dialect.name == "postgresql"
        quote = dialect.identifier_preparer.quote
        into = f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)})"
        if self.postgres:
            array_types = ", ".join(
                f"%s::{table.c[name].type.compile(dialect=dialect)}[]" for name in columns
            )
            self.sql = f"{into} SELECT * FROM unnest({array_types}) ON CONFLICT DO NOTHING"
        else:
            self.sql = f"{into} VALUES ({', '.join('?' for _ in columns)}) ON CONFLICT DO NOTHING"

    def __call__(self, conn: Connection, rows: list[tuple[Any, ...]]) -> int:
        if not rows:
            return 0
        if self.postgres:
            result = conn.exec_driver_sql(
                self.sql, tuple(list(column) for column in zip(*rows, strict=True))
            )
        else:
            result = conn.exec_driver_sql(self.sql, rows)
        return max(result.rowcount, 0)
