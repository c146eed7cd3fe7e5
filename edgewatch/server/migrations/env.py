"""Alembic's environment: runs on the connection ``server/upgrade.py`` hands it (no ini
file, no logging set-up of its own: the daemon's logging stays as it is)."""

from __future__ import annotations

from alembic import context

from edgewatch.server.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
