"""Alembic migrations of the daemon's database, run by ``server/upgrade.py`` at start.

``versions/`` holds one file per schema change, oldest first; ``0001`` is the schema as
it was when migrations began (the tables ``create_all`` used to make). A new column, table
or index is a new revision there; ``tables.py`` is changed alongside it.
"""
