"""The daemon database's reads: jobs, their records in step order, alerts, and what the
analysis rebuilds from (``Store``, in ``store.py``, adds the writes)."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Engine, func, select

from edgewatch.schemas import CRITICAL_METHOD
from edgewatch.server.tables import (
    RECORD_TABLES,
    AlertRow,
    Base,
    JobRow,
    PlanRow,
    SharpnessRow,
    StepRow,
)


class Reads:
    """Every read of the daemon's database, on ``engine``."""

    engine: Engine

    def jobs(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(JobRow.__table__).order_by(JobRow.pk)).all()
        return [dict(r._mapping) for r in rows]

    def job(self, job_id: str) -> dict[str, Any] | None:
        """One job's row, or None."""
        query = select(JobRow.__table__).where(JobRow.job_id == job_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else dict(row._mapping)

    def steps(
        self,
        job_pk: int,
        start: int | None = None,
        end: int | None = None,
        limit: int = 10_000,
        run: int | None = None,
    ) -> list[dict[str, Any]]:
        """Step records of a job (of one ``run``, else of every run) with ``start <= step
        <= end``, in step order."""
        return self._step_range(StepRow.__table__, job_pk, start, end, limit, run)

    def sharpness(
        self,
        job_pk: int,
        start: int | None = None,
        end: int | None = None,
        limit: int = 10_000,
        run: int | None = None,
    ) -> list[dict[str, Any]]:
        """Sharpness estimates of a job (of one ``run``, else of every run) with ``start
        <= step <= end``, in step order."""
        return self._step_range(SharpnessRow.__table__, job_pk, start, end, limit, run)

    def _step_range(
        self, t: Any, job_pk: int, start: int | None, end: int | None, limit: int, run: int | None
    ) -> list[dict[str, Any]]:
        query = select(t).where(t.c.job_pk == job_pk)
        if run is not None:
            query = query.where(t.c.run == run)
        if start is not None:
            query = query.where(t.c.step >= start)
        if end is not None:
            query = query.where(t.c.step <= end)
        query = query.order_by(t.c.step, t.c.run, t.c.seq).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def alerts(
        self, job_pk: int, limit: int = 10_000, run: int | None = None
    ) -> list[dict[str, Any]]:
        """The job's alerts (of one ``run``, else of every run), in the order they were
        raised."""
        t = AlertRow.__table__
        query = select(t).where(t.c.job_pk == job_pk)
        if run is not None:
            query = query.where(t.c.run == run)
        query = query.order_by(t.c.wall_time, t.c.run, t.c.seq)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query.limit(limit))]

    def curvature_spent(self, job_pk: int, run: int) -> tuple[int, float]:
        """What a run got from its curvature budget: its λ_max estimates (a critical
        sharpness is not one) and the seconds the client spent on them. The page says
        it next to the budget, so that one estimate is explained, not a dot."""
        t = SharpnessRow.__table__
        query = select(func.count(), func.sum(t.c.seconds)).where(
            t.c.job_pk == job_pk, t.c.run == run, t.c.method != CRITICAL_METHOD
        )
        with self.engine.connect() as conn:
            count, seconds = conn.execute(query).one()
        return int(count or 0), float(seconds or 0.0)

    def last_alerts(self) -> dict[int, dict[str, Any]]:
        """Each job's latest alert of its current run, by job pk: a finished job's final
        state, which the daemon shows after a restart without replaying the job."""
        a, j = AlertRow.__table__, JobRow.__table__
        newest = (
            select(a.c.job_pk, func.max(a.c.seq).label("seq"))
            .join(j, (j.c.pk == a.c.job_pk) & (j.c.run == a.c.run))
            .group_by(a.c.job_pk)
            .subquery()
        )
        query = (
            select(a)
            .join(newest, (a.c.job_pk == newest.c.job_pk) & (a.c.seq == newest.c.seq))
            .join(j, (j.c.pk == a.c.job_pk) & (j.c.run == a.c.run))
        )
        with self.engine.connect() as conn:
            return {r.job_pk: dict(r._mapping) for r in conn.execute(query)}

    def last_readings(
        self, job_pk: int, run: int
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The newest step and the newest estimate of λ_max (not a critical sharpness) of
        one run: what a finished job showed last, restored after a restart without replay.
        Both by the primary key, newest sequence number first."""
        found: list[dict[str, Any] | None] = []
        with self.engine.connect() as conn:
            for t in (StepRow.__table__, SharpnessRow.__table__):
                query = select(t).where(t.c.job_pk == job_pk, t.c.run == run)
                if t is SharpnessRow.__table__:
                    query = query.where(t.c.method != CRITICAL_METHOD)
                row = conn.execute(query.order_by(t.c.seq.desc()).limit(1)).first()
                found.append(None if row is None else dict(row._mapping))
        return found[0], found[1]

    def has_run(self, job_pk: int, run: int) -> bool:
        """Whether any record of this run is stored (one seek per record table's key)."""
        with self.engine.connect() as conn:
            for name in RECORD_TABLES:
                t = Base.metadata.tables[name]
                query = select(t.c.seq).where(t.c.job_pk == job_pk, t.c.run == run).limit(1)
                if conn.execute(query).first() is not None:
                    return True
        return False

    def had_plan(self, job_pk: int, run: int) -> bool:
        """Whether the run sent an LR plan (a finished job's ``planned_lr`` after restart)."""
        t = PlanRow.__table__
        query = select(t.c.seq).where(t.c.job_pk == job_pk, t.c.run == run)
        with self.engine.connect() as conn:
            return conn.execute(query.limit(1)).first() is not None

    def latest_plan(self, job_pk: int, run: int) -> dict[str, Any] | None:
        """The newest LR plan the run sent (a ``plans`` row), or None."""
        t = PlanRow.__table__
        query = select(t).where(t.c.job_pk == job_pk, t.c.run == run).order_by(t.c.seq.desc())
        with self.engine.connect() as conn:
            row = conn.execute(query.limit(1)).first()
        return None if row is None else dict(row._mapping)

    def run_records(
        self, job_pk: int, run: int, after: int = 0
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every stored record of one run with a sequence number over ``after`` as (table,
        row), in the client's sequence order: what the analysis saw live, for ``replay``
        and for rebuilding after a restart (from a checkpoint: ``after`` is its ``seq``)."""
        streams = []
        with self.engine.connect() as conn:
            for name in RECORD_TABLES:
                table = Base.metadata.tables[name]
                query = (
                    select(table)
                    .where(table.c.job_pk == job_pk, table.c.run == run, table.c.seq > after)
                    .order_by(table.c.seq)
                )
                rows = conn.execution_options(yield_per=5000).execute(query)
                streams.append(_tagged(name, rows))
            for _, name, row in heapq.merge(*streams, key=lambda item: item[0]):
                yield name, row

    def count(self, table: str, job_pk: int | None = None) -> int:
        t = Base.metadata.tables[table]
        query = select(func.count()).select_from(t)
        if job_pk is not None:
            query = query.where(t.c.job_pk == job_pk)
        with self.engine.connect() as conn:
            return int(conn.scalar(query) or 0)


def _tagged(table: str, rows: Iterable[Any]) -> Iterator[tuple[int, str, dict[str, Any]]]:
    for r in rows:
        yield r.seq, table, dict(r._mapping)
