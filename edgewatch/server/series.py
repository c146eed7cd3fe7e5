"""The web page's chart data: a job's steps and sharpness over a step range, as columns, cut
down to the min and max of each pixel bucket when the range holds more rows than pixels;
and the planned LR ahead of the job.

Three ways to a range, cheapest first, chosen from the job's block summary (``blocks.py``):

- at most 2 rows per bucket: the rows themselves (an index range scan over the blocks'
  sequence numbers), not downsampled;
- at least one block per bucket: buckets from the blocks, no rows read;
- in between (a zoom into a long job): one GROUP BY over the rows in range, at most
  ``points`` x 256 of them;
- where retention dropped rows (README, "Retention"): from the blocks, whatever the zoom,
  so a dropped stretch shows at most one bucket per 256 sequence numbers.

A downsampled bucket is two points, at its first and last step: the min and the max of
each column, in the order the curve travels (rising: min first), so that a monotone curve
stays a clean line and a noisy one becomes its min/max envelope, as drawn per pixel.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from sqlalchemy import Table, and_, func, select

from edgewatch.monitor.plan import LRPlan
from edgewatch.monitor.thresholds import threshold_for
from edgewatch.server.archive import BLOCK
from edgewatch.server.blocks import F64, I64, SPECS, RunBlocks, SeriesCache, TableSpec
from edgewatch.server.state import JobState
from edgewatch.server.store import Store

DEFAULT_POINTS = 2000
MAX_POINTS = 10_000
PLAN_SAMPLES = 128
"""Points of the planned LR curve (besides its knots): the threshold c/η between two
knots is a curve, not a line."""


@dataclasses.dataclass
class Buckets:
    """Per-bucket aggregates, in bucket order; columns as in the table's TableSpec."""

    lo: I64
    hi: I64
    count: I64
    mins: F64
    maxs: F64


def job_series(
    store: Store,
    cache: SeriesCache,
    state: JobState,
    start: int | None,
    end: int | None,
    points: int,
    tables: tuple[str, ...] = tuple(SPECS),
) -> dict[str, Any]:
    """``GET /api/jobs/{id}/series``: the tables over [start, end] (default: all)."""
    runs = cache.summary(state.pk, state.records).snapshot()
    every = [b for table in runs.values() for b in table.values() if len(b)]
    first = min((int(b.step_lo.min()) for b in every), default=None)
    last = max((int(b.step_hi.max()) for b in every), default=None)
    lo = start if start is not None else (first or 0)
    hi = end if end is not None else (last if last is not None else lo)
    out: dict[str, Any] = {"first_step": first, "last_step": last, "start": lo, "end": hi}
    out["points"] = points
    for name in tables:
        out[name] = _table_series(store, SPECS[name], state, runs[name], max(lo, 0), hi, points)
    return out


def _table_series(
    store: Store,
    spec: TableSpec,
    state: JobState,
    runs: dict[int, RunBlocks],
    start: int,
    end: int,
    points: int,
) -> dict[str, Any]:
    chosen = {run: _overlapping(b, start, end) for run, b in runs.items()}
    chosen = {run: b for run, b in chosen.items() if len(b)}
    at_most = sum(int(b.count.sum()) for b in chosen.values())  # the edge blocks in full
    if end >= start and any(b.archived.any() for b in chosen.values()):
        # Retention dropped rows here: their blocks are all that is left of them.
        buckets = _from_blocks(chosen.values(), start, end, points)
    elif end < start or at_most <= 2 * points + 2 * BLOCK * len(chosen):
        steps, values = _rows(store, spec, state.pk, chosen, start, end)
        if len(steps) <= 2 * points:
            return _raw_json(spec, state, steps, values)
        ids = (steps - start) * points // (end - start + 1)
        ones = np.ones(len(steps), dtype=np.int64)
        buckets = _reduce(ids, ones, steps, steps, values, values)
    elif sum(len(b) for b in chosen.values()) >= points:
        buckets = _from_blocks(chosen.values(), start, end, points)
    else:
        buckets = _from_rows(store, spec, state.pk, chosen, start, end, points)
    columns = dict(zip(spec.names, zip(buckets.mins.T, buckets.maxs.T, strict=True), strict=True))
    columns = _bucket_columns(state.optimizer, columns)
    x, ys = _points(buckets, columns)
    return {
        "downsampled": True,
        "rows": int(buckets.count.sum()),
        "buckets": len(buckets.lo),
        "step": x,
        **ys,
    }


def _overlapping(blocks: RunBlocks, start: int, end: int) -> RunBlocks:
    keep = (blocks.step_hi >= start) & (blocks.step_lo <= end)
    return RunBlocks(*(getattr(blocks, f.name)[keep] for f in dataclasses.fields(RunBlocks)))


def _in_range(t: Table, job_pk: int, run: int, blocks: RunBlocks, start: int, end: int) -> Any:
    """The rows of these blocks (an index range) with a step in [start, end]."""
    return and_(
        t.c.job_pk == job_pk,
        t.c.run == run,
        t.c.seq >= int(blocks.ids[0]) * BLOCK,
        t.c.seq < (int(blocks.ids[-1]) + 1) * BLOCK,
        t.c.step >= start,
        t.c.step <= end,
    )


def _rows(
    store: Store,
    spec: TableSpec,
    job_pk: int,
    chosen: dict[int, RunBlocks],
    start: int,
    end: int,
) -> tuple[I64, F64]:
    """The rows themselves in step order: steps, and a (rows, columns) array (NULL: NaN)."""
    t = spec.table
    rows: list[Any] = []
    with store.engine.connect() as conn:
        for run, blocks in chosen.items():
            query = select(t.c.step, *(c for _, c in spec.columns))
            query = query.where(_in_range(t, job_pk, run, blocks, start, end)).order_by(t.c.seq)
            rows += conn.execute(query).all()
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, len(spec.columns)))
    steps = np.array([r[0] for r in rows], dtype=np.int64)
    values = np.array([r[1:] for r in rows], dtype=np.float64)
    order = np.argsort(steps, kind="stable")  # stable: each run's rows keep their order
    return steps[order], values[order]


def _raw_json(spec: TableSpec, state: JobState, steps: I64, values: F64) -> dict[str, Any]:
    out: dict[str, Any] = {"downsampled": False, "rows": len(steps), "buckets": 0}
    out["step"] = steps.tolist()
    columns = dict(zip(spec.names, values.T, strict=True))
    thresholds = _thresholds(state.optimizer, columns["lr"])
    if "value" in columns:  # sharpness: value, its threshold and their ratio
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = columns["value"] / thresholds
        columns = {"value": columns["value"], "stability_ratio": ratio}
    columns["stability_threshold"] = thresholds
    for name, column in columns.items():
        out[name] = column.tolist()  # NaN -> null in the JSON
    return out


def _threshold(optimizer: dict[str, Any], lr: float | None) -> float | None:
    if lr is None or not lr > 0 or not math.isfinite(lr):
        return None
    return threshold_for(optimizer, lr)


def _from_blocks(chosen: Any, start: int, end: int, points: int) -> Buckets:
    """Each block into the bucket of its middle step; min/max of min/max per bucket."""
    parts = list(chosen)
    mids = np.concatenate([(b.step_lo + b.step_hi) // 2 for b in parts])
    ids = np.clip((mids - start) * points // (end - start + 1), 0, points - 1)
    return _reduce(
        ids,
        np.concatenate([b.count for b in parts]),
        np.concatenate([b.step_lo for b in parts]),
        np.concatenate([b.step_hi for b in parts]),
        np.concatenate([b.mins for b in parts]),
        np.concatenate([b.maxs for b in parts]),
    )


def _from_rows(
    store: Store,
    spec: TableSpec,
    job_pk: int,
    chosen: dict[int, RunBlocks],
    start: int,
    end: int,
    points: int,
) -> Buckets:
    """One GROUP BY per run over the rows in range (fewer than 256 x points of them)."""
    t: Table = spec.table
    bucket = ((t.c.step - start) * points // (end - start + 1)).label("bucket")
    aggregates = [func.count(), func.min(t.c.step), func.max(t.c.step)]
    for _, column in spec.columns:
        aggregates += [func.min(column), func.max(column)]
    rows: list[Any] = []
    with store.engine.connect() as conn:
        for run, blocks in chosen.items():
            query = (
                select(bucket, *aggregates)
                .where(_in_range(t, job_pk, run, blocks, start, end))
                .group_by(bucket)
            )
            rows += conn.execute(query).all()
    b = RunBlocks.from_rows(rows, len(spec.columns))
    return _reduce(b.ids, b.count, b.step_lo, b.step_hi, b.mins, b.maxs)


def _reduce(ids: I64, count: I64, lo: I64, hi: I64, mins: F64, maxs: F64) -> Buckets:
    """Merge entries with the same bucket id (blocks of one bucket, runs sharing one)."""
    if len(ids) == 0:
        return Buckets(lo, hi, count, mins, maxs)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    # fmax/fmin skip NaN (a bucket whose values were all NULL stays NaN)
    return Buckets(
        lo=np.minimum.reduceat(lo[order], starts),
        hi=np.maximum.reduceat(hi[order], starts),
        count=np.add.reduceat(count[order], starts),
        mins=np.fmin.reduceat(mins[order], starts, axis=0),
        maxs=np.fmax.reduceat(maxs[order], starts, axis=0),
    )


def _bucket_columns(
    optimizer: dict[str, Any], columns: dict[str, tuple[F64, F64]]
) -> dict[str, tuple[F64, F64]]:
    """The threshold from the LR's max and min (the threshold c/η falls as η rises); for
    sharpness, the ratio from value·lr's min and max (ratio = value·η/c) in place of the
    LR, which its chart does not show."""
    lr_min, lr_max = columns["lr"]
    thresholds = (_thresholds(optimizer, lr_max), _thresholds(optimizer, lr_min))
    if "value" not in columns:
        return {**columns, "stability_threshold": thresholds}
    out = {"value": columns["value"], "stability_threshold": thresholds}
    c = threshold_for(optimizer, 1.0)
    if math.isfinite(c) and math.isclose(threshold_for(optimizer, 0.5), 2 * c):
        low, high = columns["value_lr"]
        out["stability_ratio"] = (low / c, high / c)
    return out


def _thresholds(optimizer: dict[str, Any], lrs: F64) -> F64:
    return np.array([_threshold(optimizer, float(lr)) or math.nan for lr in lrs])


def _points(
    buckets: Buckets, columns: dict[str, tuple[F64, F64]]
) -> tuple[list[int], dict[str, list[float]]]:
    """Two points per bucket, at its first and last step (see the module docstring)."""
    x = np.empty(2 * len(buckets.lo), dtype=np.int64)
    x[0::2], x[1::2] = buckets.lo, buckets.hi
    values = {}
    for name, (low, high) in columns.items():
        mid = (low + high) / 2
        rising = np.ones(len(mid), dtype=bool)
        if len(mid) > 1:
            with np.errstate(invalid="ignore"):
                rising[:-1] = ~(mid[1:] < mid[:-1])
            rising[-1] = rising[-2]
        y = np.empty(2 * len(low))
        y[0::2] = np.where(rising, low, high)
        y[1::2] = np.where(rising, high, low)
        values[name] = y.tolist()  # NaN -> null in the JSON
    return x.tolist(), values


def job_plan(store: Store, state: JobState) -> dict[str, Any] | None:
    """``GET /api/jobs/{id}/plan``: the newest LR plan of the job's current run, and the
    planned LR and threshold from the last step to the plan's end; null without one."""
    row = store.latest_plan(state.pk, state.run)
    if row is None:
        return None
    plan = LRPlan(tuple(row["steps"]), tuple(row["lrs"]))
    first = max(plan.steps[0], state.last_step if state.last_step is not None else 0)
    steps = _curve_steps(plan, first)
    lrs = [plan.at(s) for s in steps]
    return {
        "step": row["step"],
        "source": row["source"],
        "steps": list(plan.steps),
        "lrs": list(plan.lrs),
        "curve": {
            "step": steps,
            "lr": lrs,
            "stability_threshold": [_threshold(state.optimizer, lr) for lr in lrs],
        },
    }


def _curve_steps(plan: LRPlan, first: int) -> list[int]:
    if first > plan.end:
        return []
    even = np.linspace(first, plan.end, PLAN_SAMPLES).round().astype(np.int64).tolist()
    return sorted({*even, *plan.knots_between(first, plan.end)})
