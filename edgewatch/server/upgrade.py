"""Bringing the daemon's database to the current schema at start, with Alembic.

``edgewatch serve`` runs ``upgrade(engine)`` before it reads anything:

- an empty database gets every revision of ``migrations/versions/``, from ``0001``;
- a database made before Alembic (``create_all``, no ``alembic_version`` table) already
  has the tables of ``0001``, but perhaps not the nullable columns later releases added
  by hand (``add_missing_columns``): they are added, it is stamped ``0001``, and the
  revisions after it run;
- a database at an older revision gets the revisions after it; one at head, nothing.

Several daemons may start at once on one PostgreSQL (DESIGN.md, "Scaling out"): the
whole upgrade runs in one transaction holding a transaction-level advisory lock
(``pg_advisory_xact_lock``) on the connection it runs on, so the second daemon waits,
then finds the schema at head (the race on ``create_all`` made one of them die with
UniqueViolation/DuplicateTable). DDL is transactional in PostgreSQL: a daemon killed
mid-upgrade leaves the database as it was. A SQLite file is one daemon's.
"""

from __future__ import annotations

import logging
from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, create_engine, func, inspect, select, text

from edgewatch.server.tables import Base

log = logging.getLogger(__name__)
# Alembic says at INFO what it does and each revision's whole docstring; the one line
# ``upgrade`` logs (from which revision to which) is what a user needs.
logging.getLogger("alembic").setLevel(logging.WARNING)

BASE_REVISION = "0001"
LOCK_KEY = 0x6564676577617463  # "edgewatc": one key for every edgewatch database


def alembic_config() -> Config:
    """The Alembic configuration of the migrations shipped inside the package."""
    config = Config()
    location = resources.files("edgewatch.server") / "migrations"
    config.set_main_option("script_location", str(location))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(engine: Engine) -> str | None:
    """Bring the database to the newest revision; returns the revision it was at."""
    config = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(LOCK_KEY)))
        before = MigrationContext.configure(conn).get_current_revision()
        if before is None and inspect(conn).has_table("jobs"):
            # Made by create_all, before Alembic: brought to the base revision's columns.
            add_missing_columns(conn, Base.metadata, base_columns())
            config.attributes["connection"] = conn
            command.stamp(config, BASE_REVISION)
            before = BASE_REVISION
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    head = head_revision()
    if before != head:
        log.info("database upgraded from revision %s to %s", before or "(empty)", head)
    return before


def base_columns() -> dict[str, set[str]]:
    """Each table's columns at BASE_REVISION, from its migration run on an in-memory
    SQLite (a few ms, and only for a database from before Alembic)."""
    engine = create_engine("sqlite://")
    try:
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, BASE_REVISION)
            inspector = inspect(conn)
            return {
                t: {c["name"] for c in inspector.get_columns(t)}
                for t in inspector.get_table_names()
            }
    finally:
        engine.dispose()


def add_missing_columns(
    conn: Connection, metadata: MetaData, wanted: dict[str, set[str]]
) -> list[str]:
    """Add the nullable columns of ``wanted`` (the base revision's, ``base_columns``) a
    pre-Alembic database lacks, as ``metadata`` types them; returns them as
    ``table.column``. Every change before Alembic was such a column (a new wire field with
    a default); every change since is a revision in ``migrations/versions/``, which adds
    its own columns after the stamp."""
    inspector = inspect(conn)
    added = []
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue  # a table of a later revision: the upgrade makes it
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present or column.name not in wanted.get(table.name, ()):
                continue
            if not column.nullable:
                raise RuntimeError(
                    f"table {table.name!r} lacks the non-nullable column {column.name!r}: "
                    "this database needs a migration edgewatch cannot make by itself"
                )
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
            added.append(f"{table.name}.{column.name}")
    if added:
        log.info("database from before migrations: added column(s) %s", ", ".join(added))
    return added
