"""PostgreSQL: step rows through COPY, the engine's own bulk path, with exact counts.

``bulk.py``'s ``INSERT ... SELECT FROM unnest(arrays)`` spends most of the daemon's time
in the driver turning Python values into arrays; psycopg's binary COPY writes the same
rows for a small part of that (bench/RESULTS.md, "COPY ingest on PostgreSQL"). COPY
cannot skip a row that is already stored, so a commit goes one of two ways:

- **direct**: one ``COPY steps FROM STDIN (FORMAT BINARY)`` of every frame's rows inside
  a savepoint. It succeeds only when no row was stored before, so each frame stored all
  of its rows: the counts are exact without asking the database.
- **staged**, when the direct COPY met a row already stored (a resent frame): the
  savepoint is rolled back, the rows are copied into a temporary table beside the
  index of the frame they came in, and one ``INSERT ... SELECT ... ON CONFLICT DO
  NOTHING RETURNING`` stores the new ones; joined back to the staging table it says
  how many each frame stored. A key sent twice in one commit is stored from, and
  counted for, the first frame that carries it, as frame-by-frame inserts would.

Resends come in runs (a restarted daemon, clients past their resend timeout), so after
a commit that met duplicates the next ones go staged at once, without paying for a COPY
that would be rolled back, until a staged commit finds none.

Everything runs inside the caller's transaction: the Ack still comes after the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import psycopg
from sqlalchemy import BigInteger, Boolean, Float, Integer, Table
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

# PostgreSQL's binary COPY has no type tags: psycopg must be told how to write each
# column. JSON columns travel as their encoded text (rows.py), which json's binary input
# reads as it is.
_BINARY_TYPES: tuple[tuple[type[Any], str], ...] = (
    (BigInteger, "int8"),  # before Integer, its base class
    (Integer, "int4"),
    (Float, "float8"),
    (Boolean, "bool"),
)
STAGE = "edgewatch_copy_stage"


def _binary_type(column: Any) -> str:
    for kind, name in _BINARY_TYPES:
        if isinstance(column.type, kind):
            return name
    return "text"


class CopyInsert:
    """``insert(conn, frames)`` for one table: each frame's rows, returns rows stored per
    frame. The table's primary key is the delivery key that makes a resend a duplicate."""

    def __init__(self, table: Table, columns: Sequence[str]) -> None:
        self.types = [_binary_type(table.c[name]) for name in columns]
        quoted = ", ".join(f'"{c}"' for c in columns)
        key = ", ".join(f'"{c.name}"' for c in table.primary_key.columns)
        self.copy_direct = f'COPY "{table.name}" ({quoted}) FROM STDIN (FORMAT BINARY)'
        self.create_stage = f'CREATE TEMP TABLE {STAGE} (LIKE "{table.name}", frame int4)'
        self.copy_staged = f"COPY {STAGE} ({quoted}, frame) FROM STDIN (FORMAT BINARY)"
        # DISTINCT ON keeps the first frame's row of a key sent twice in this commit;
        # RETURNING names the keys that were new, the join the frame that brought each.
        self.insert_staged = (
            f'WITH new AS (INSERT INTO "{table.name}" ({quoted}) '
            f"SELECT DISTINCT ON ({key}) {quoted} FROM {STAGE} ORDER BY {key}, frame "
            f"ON CONFLICT DO NOTHING RETURNING {key}), "
            f"first AS (SELECT {key}, min(frame) AS frame FROM {STAGE} GROUP BY {key}) "
            f"SELECT first.frame, count(*) FROM new JOIN first USING ({key}) GROUP BY first.frame"
        )
        self.direct = True
        """False after a commit that met rows already stored: go staged straight away."""

    def __call__(self, conn: Connection, frames: Sequence[list[tuple[Any, ...]]]) -> list[int]:
        if not any(frames):
            return [0] * len(frames)
        driver = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
        cursor = driver.cursor()
        sql = self.copy_direct
        try:
            if self.direct:
                savepoint = conn.begin_nested()
                try:
                    with cursor.copy(sql) as copy:
                        copy.set_types(self.types)
                        for rows in frames:
                            for row in rows:
                                copy.write_row(row)
                except psycopg.errors.UniqueViolation:
                    savepoint.rollback()
                    self.direct = False
                else:
                    savepoint.commit()
                    return [len(rows) for rows in frames]
            sql = self.insert_staged
            stored = self._staged(cursor, frames)
            self.direct = sum(stored) == sum(len(rows) for rows in frames)
            return stored
        except psycopg.Error as exc:
            # Raised as SQLAlchemy raises driver errors, so that the writer tells a
            # database that is away (OperationalError) from a frame it cannot store.
            raise DBAPIError.instance(sql, None, exc, psycopg.Error, dialect=conn.dialect) from exc
        finally:
            cursor.close()

    def _staged(
        self, cursor: psycopg.Cursor[Any], frames: Sequence[list[tuple[Any, ...]]]
    ) -> list[int]:
        cursor.execute(self.create_stage)
        with cursor.copy(self.copy_staged) as copy:
            copy.set_types([*self.types, "int4"])
            for index, rows in enumerate(frames):
                for row in rows:
                    copy.write_row((*row, index))
        cursor.execute(self.insert_staged)
        stored = [0] * len(frames)
        for index, count in cursor.fetchall():
            stored[index] = int(count)
        cursor.execute(f"DROP TABLE {STAGE}")  # a temporary table lives as long as the session
        return stored
