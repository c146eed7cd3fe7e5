"""Which daemon analyses a job: a lease row per job, kept by the database itself.

Several daemons may share one database (DESIGN.md, "Scaling out"). Each job's analysis
(its forecast, its alerts, its per-job series on ``/metrics``) belongs to one of them at a
time: the holder of the job's row in ``leases``. Every statement here runs inside a
transaction the caller opened, so a claim commits or fails with the records it goes with:

- a commit that stores records of a job claims it: the lease is renewed if this daemon
  holds it, taken if it has expired (its holder died, or its client moved away), left
  alone if another daemon holds it; then the records are stored either way, and the
  holder is told (``generation``) that someone else stored some;
- ``generation`` changes with every change of holder and every store by a non-holder, so
  a holder whose remembered generation differs knows its analysis in memory missed
  records, and rebuilds it from the database.

Expiry is judged by the database's clock, so that daemons on hosts whose clocks disagree
still agree on it. Concurrent claims of one expired lease are serialised by the row lock
(PostgreSQL) or the single writer (SQLite): one wins, the others see it held.

A daemon's name is its host and its ZeroMQ endpoint, which the OS lets one live process
bind at a time: a daemon restarted on the same host and endpoint takes its leases back at
once, one elsewhere waits for them to expire.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Float, Integer, String, case, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from edgewatch.server.tables import JobRow, LeaseRow

L = LeaseRow


def daemon_name(endpoint: str) -> str:
    """This daemon's name in the leases table (host and ZeroMQ endpoint bound)."""
    return f"{socket.gethostname()} {endpoint}"[:300]


def database_now(dialect: str) -> ColumnElement[Any]:
    """The database's clock in seconds since the epoch (leases are judged by it)."""
    if dialect == "postgresql":
        return func.extract("epoch", func.clock_timestamp())
    return (func.julianday("now") - 2440587.5) * 86400.0


def _insert(dialect: str) -> Any:
    return (postgresql if dialect == "postgresql" else sqlite).insert(LeaseRow)


class Leases:
    """This daemon's claims on jobs; ``seconds`` is how long a claim lasts unrenewed."""

    def __init__(self, owner: str, seconds: float) -> None:
        self.owner = owner
        self.seconds = seconds

    def claim(self, conn: Connection, job_pks: Iterable[int]) -> dict[int, int]:
        """Renew or take the leases of these jobs (their records are in this transaction);
        returns the generation of each one held. The others get their generation raised:
        their holder did not see these records."""
        pks = sorted(set(job_pks))
        if not pks:
            return {}
        dialect = conn.dialect.name
        rows = [{"job_pk": pk, "owner": "", "expires_at": 0.0, "generation": 0} for pk in pks]
        conn.execute(_insert(dialect).values(rows).on_conflict_do_nothing())
        self._take(conn, L.job_pk.in_(pks))
        held = self._held(conn, L.job_pk.in_(pks))
        others = [pk for pk in pks if pk not in held]
        if others:
            conn.execute(
                update(LeaseRow).where(L.job_pk.in_(others)).values(generation=L.generation + 1)
            )
        return held

    def claim_all(self, conn: Connection) -> dict[int, int]:
        """At start: take every job whose lease has expired (or that has none); returns
        the generation of each job held."""
        dialect = conn.dialect.name
        blank = (literal("", String), literal(0.0, Float), literal(0, Integer))
        # WHERE: SQLite reads ON CONFLICT after a bare SELECT ... FROM as a join's ON.
        missing = select(JobRow.pk, *blank).where(JobRow.pk.is_not(None))
        conn.execute(
            _insert(dialect)
            .from_select(["job_pk", "owner", "expires_at", "generation"], missing)
            .on_conflict_do_nothing()
        )
        self._take(conn, None)
        return self._held(conn, None)

    def take(self, conn: Connection, job_pks: Iterable[int]) -> dict[int, int]:
        """Take the leases of these jobs that have expired; returns those held."""
        pks = sorted(set(job_pks))
        self._take(conn, L.job_pk.in_(pks))
        return self._held(conn, L.job_pk.in_(pks))

    def held(self, conn: Connection) -> dict[int, int]:
        """The jobs this daemon holds now (expired or not, as long as no one took them),
        with their generations."""
        return self._held(conn, None)

    def release(self, conn: Connection) -> None:
        """On a clean stop: every lease expires now, so that another daemon (or this one
        restarted elsewhere) takes the jobs at once."""
        conn.execute(update(LeaseRow).where(L.owner == self.owner).values(expires_at=0.0))

    def _take(self, conn: Connection, which: ColumnElement[bool] | None) -> None:
        now = database_now(conn.dialect.name)
        query = update(LeaseRow).where(or_(L.owner == self.owner, L.expires_at < now))
        if which is not None:
            query = query.where(which)
        conn.execute(
            query.values(
                owner=self.owner,
                expires_at=now + self.seconds,
                generation=case((L.owner == self.owner, L.generation), else_=L.generation + 1),
            )
        )

    def _held(self, conn: Connection, which: ColumnElement[bool] | None) -> dict[int, int]:
        query = select(L.job_pk, L.generation).where(L.owner == self.owner)
        if which is not None:
            query = query.where(which)
        return {int(pk): int(gen) for pk, gen in conn.execute(query)}
