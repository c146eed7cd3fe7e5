"""Bringing a database written by an earlier edgewatch up to the current schema.

Every change so far has been additive: a new nullable column on a record table (a new
wire field with a default, per the schema-evolution rules in ``schemas/records.py``).
Those are added here at start, with ``ALTER TABLE ... ADD COLUMN``, which SQLite and
PostgreSQL both run in place without rewriting the table. A change that is not additive
(a type change, a new key) needs a real migration tool (Alembic) and must not be made
by extending this function.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, MetaData, inspect, text

log = logging.getLogger(__name__)


def add_missing_columns(engine: Engine, metadata: MetaData) -> list[str]:
    """Add the nullable columns the tables lack; returns them as ``table.column``."""
    inspector = inspect(engine)
    existing_tables = set(inspector.get_table_names())
    added = []
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            if table.name not in existing_tables:
                continue  # create_all makes it whole
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                if not column.nullable:
                    raise RuntimeError(
                        f"table {table.name!r} lacks the non-nullable column {column.name!r}: "
                        "this database needs a migration edgewatch cannot make by itself"
                    )
                kind = column.type.compile(dialect=engine.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
                added.append(f"{table.name}.{column.name}")
    if added:
        log.info("database upgraded: added column(s) %s", ", ".join(added))
    return added
