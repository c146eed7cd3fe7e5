"""PostgreSQL: the step table's day partitions, made ahead and dropped by retention.

Revision 0003 partitions ``steps`` by range of ``wall_time``, one partition per UTC day
(``steps_pYYYYMMDD``), beside a DEFAULT partition. The key is the record's own wall time,
not the time it arrived, so that a resent record lands in the partition of its first copy
and is a duplicate there (``tables.py``).

- **Ahead.** ``ensure`` makes the partitions of today and the next ``AHEAD_DAYS`` days; the
  daemon runs it at start and every hour (``retention.py``), so a day's partition exists
  days before its first record. The DEFAULT partition catches what no partition covers (a
  client clock far off, a spool drained weeks late): an insert never fails for want of a
  partition. A partition made for a range that the DEFAULT partition holds rows of takes
  those rows with it (PostgreSQL refuses to attach it otherwise).
- **Dropped.** ``retire`` detaches each partition whose whole day is older than the
  cutoff and renames it ``steps_rYYYYMMDD``, in a short transaction (DETACH holds the
  parent's ACCESS EXCLUSIVE lock: commits of records wait for it, for milliseconds); then,
  one transaction per retired table, archives its rows' block summaries (``archive.py``)
  and drops it. The slow part, reading a day of steps, runs on a table no one writes.
  A retired table left by a daemon killed in between is finished by the next pass. Rows of
  the DEFAULT partition older than the cutoff are archived and deleted.
- **Several daemons.** Each of these runs under a transaction-level advisory lock: two
  daemons never make or drop the same partition; a daemon that finds retention under way
  elsewhere skips its pass. ``lock_timeout`` bounds how long DDL waits for the ingest's
  locks: a pass that cannot get them fails, is logged, and runs again next time.
"""

from __future__ import annotations

import dataclasses
import datetime

from sqlalchemy import Connection, Engine, func, select, text

from edgewatch.server.archive import archive_and_delete_pg, archive_pg

DAY = 86_400
AHEAD_DAYS = 7
LIVE, RETIRED, DEFAULT = "steps_p", "steps_r", "steps_default"
LOCK_KEY = 0x65646777_72657431  # not upgrade.py's: retention never waits for an upgrade
LOCK_TIMEOUT = "10s"


@dataclasses.dataclass
class Dropped:
    """What one retention pass dropped."""

    partitions: list[str] = dataclasses.field(default_factory=list)
    rows: int = 0


def day_name(prefix: str, day: int) -> str:
    """``steps_p20250301`` for the day (days since the epoch, UTC)."""
    date = datetime.datetime.fromtimestamp(day * DAY, datetime.timezone.utc)
    return prefix + date.strftime("%Y%m%d")


def name_day(name: str) -> int:
    date = datetime.datetime.strptime(name[len(LIVE) :], "%Y%m%d")
    return int(date.replace(tzinfo=datetime.timezone.utc).timestamp()) // DAY


def _tables(conn: Connection, prefix: str, attached: bool) -> dict[str, int]:
    """Tables named ``prefix`` + a date: the attached partitions of ``steps``, or tables
    that are not partitions (retired ones); by name, with their day."""
    partition_of = (
        "EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid "
        "AND i.inhparent = 'steps'::regclass)"
    )
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r' "
            "AND c.relnamespace = current_schema()::regnamespace AND c.relname LIKE :pattern "
            f"AND {'' if attached else 'NOT '}{partition_of}"
        ),
        {"pattern": prefix.replace("_", r"\_") + "%"},
    ).scalars()
    found = {}
    for name in rows:
        try:
            found[name] = name_day(name)
        except ValueError:
            continue  # not one of ours
    return found


def _locked(conn: Connection, wait: bool) -> bool:
    lock = func.pg_advisory_xact_lock if wait else func.pg_try_advisory_xact_lock
    got = conn.scalar(select(lock(LOCK_KEY)))
    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    return wait or bool(got)


def ensure(engine: Engine, now: float) -> list[str]:
    """Make the partitions of the day of ``now`` and the next AHEAD_DAYS; returns those
    made (none when another daemon made them first)."""
    today = int(now // DAY)
    made = []
    with engine.begin() as conn:
        _locked(conn, wait=True)
        existing = _tables(conn, LIVE, attached=True)
        for day in range(today, today + AHEAD_DAYS + 1):
            name = day_name(LIVE, day)
            if name in existing:
                continue
            lo, hi = day * DAY, (day + 1) * DAY
            # No insert into the DEFAULT partition between moving its rows of this day
            # out and attaching: the attach would find one and fail.
            conn.execute(text(f"LOCK TABLE {DEFAULT} IN SHARE ROW EXCLUSIVE MODE"))
            conn.execute(text(f"CREATE TABLE {name} (LIKE steps INCLUDING DEFAULTS)"))
            conn.execute(
                text(
                    f"WITH moved AS (DELETE FROM {DEFAULT} WHERE wall_time >= {lo} "
                    f"AND wall_time < {hi} RETURNING *) INSERT INTO {name} SELECT * FROM moved"
                )
            )
            conn.execute(
                text(f"ALTER TABLE steps ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi})")
            )
            made.append(name)
    return made


def retire(engine: Engine, cutoff: float) -> Dropped:
    """Drop the partitions whose day ends at or before ``cutoff`` and the DEFAULT
    partition's rows older than it, their block summaries archived first."""
    dropped = Dropped()
    with engine.begin() as conn:
        if not _locked(conn, wait=False):
            return dropped  # another daemon's pass is under way
        for name, day in sorted(_tables(conn, LIVE, attached=True).items()):
            if (day + 1) * DAY <= cutoff:
                conn.execute(text(f"ALTER TABLE steps DETACH PARTITION {name}"))
                conn.execute(text(f"ALTER TABLE {name} RENAME TO {day_name(RETIRED, day)}"))
    with engine.connect() as conn:
        retired = sorted(_tables(conn, RETIRED, attached=False))
    for name in retired:
        with engine.begin() as conn:
            if not _locked(conn, wait=False):
                return dropped
            if conn.scalar(select(func.to_regclass(name))) is None:
                continue  # another daemon dropped it since
            dropped.rows += archive_pg(conn, name)
            conn.execute(text(f"DROP TABLE {name}"))
            dropped.partitions.append(day_name(LIVE, name_day(name)))
    with engine.begin() as conn:
        if _locked(conn, wait=False):
            dropped.rows += archive_and_delete_pg(conn, DEFAULT, f"wall_time < {float(cutoff)!r}")
    return dropped
