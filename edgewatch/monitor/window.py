"""Many steps at once, to the same result as one at a time: the arrays of the forecast's
block path. NumPy and SciPy; imports nothing of the forecast (which owns the loop).

The daemon feeds the forecast every step record it commits (a frame carries up to a few
thousand), and a Python call per step cost more than the insert itself (the end-to-end
ingest fell from 75–82% of the raw insert rate to 61%, bench/RESULTS.md). Nearly every
step changes nothing but a few running averages. So ``JobForecast.observe_steps`` tries
a window of steps in arrays: each average scans it (``LossHealth.scan``,
``Excursion.scan``: ``scipy.signal.lfilter`` does the same products and sums, in the
same order, as the scalar update, so the results are equal to the bit, which
tests/test_forecast_batch.py checks), the plan's LR by the same interpolation as
``LRPlan.at`` (here). The first step at which anything could happen (a non-finite value,
a loss excursion, a precursor over its threshold, a crossing within the horizon, an LR
off the plan, the end of a quiet stretch) goes through ``observe_step`` itself, so the
state machine has one implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from scipy.signal import lfilter

from edgewatch.monitor.plan import COMPRESS_TOLERANCE, LRPlan

__all__ = ["MAX_BACKOFF", "MIN_BLOCK", "StepLike", "columns", "ema", "off_plan", "quiet_counts"]

MIN_BLOCK = 16  # shorter blocks go one step at a time (arrays cost more than they save)
MAX_BACKOFF = 64  # at most this many scalar steps between two tries of the block path


class StepLike(Protocol):
    """A step record's fields, as ``schemas.Step`` has them (read-only)."""

    @property
    def step(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def loss(self) -> float | None: ...
    @property
    def grad_norm(self) -> float | None: ...
    @property
    def update_norm(self) -> float | None: ...
    @property
    def moment_ratio(self) -> float | None: ...


def columns(block: Sequence[StepLike], after: int) -> tuple[Any, Any, list[float], Any, Any] | None:
    """The block's steps, LRs, losses (1.0 where unusable) and gradient norms, as
    arrays, and whether each step can be quiet at all: finite, a positive loss, a step
    after the one before (resends and reordering go one at a time). None where a loss or
    a gradient norm is missing."""
    losses, grads = [r.loss for r in block], [r.grad_norm for r in block]
    if None in losses or None in grads:
        return None
    steps = np.fromiter((r.step for r in block), np.int64, len(block))
    lrs = np.fromiter((r.lr for r in block), np.float64, len(block))
    loss = np.asarray(losses, dtype=np.float64)
    ok = np.isfinite(np.asarray(grads, dtype=np.float64)) & (loss > 0) & np.isfinite(loss)
    ok &= np.diff(steps, prepend=after) > 0
    return steps, lrs, np.where(ok, loss, 1.0).tolist(), grads, ok


def ema(weight: float, x: Any, before: float) -> Any:
    """weight·x + (1 − weight)·previous, step after step, as the scalar updates compute it."""
    return lfilter([weight], [1.0, -(1 - weight)], x, zi=[(1 - weight) * before])[0]


def off_plan(
    plan: LRPlan | None,
    lr_scale: float,
    lr_assumed: float | None,
    steps: np.ndarray[Any, Any],
    lrs: np.ndarray[Any, Any],
) -> Any:
    """Per step, whether its LR leaves what the forecast assumed (plan.py's lr_moved)."""
    if plan is not None:
        expected = _plan_at(plan, steps) * lr_scale
    elif lr_assumed is not None:
        expected = np.full(len(steps), lr_assumed)
    else:
        return np.ones(len(steps), dtype=bool)
    return np.abs(lrs - expected) > COMPRESS_TOLERANCE * np.maximum(np.abs(expected), 1e-300)


def _plan_at(plan: LRPlan, steps: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``plan.at`` of each step, with its arithmetic in its order."""
    knots = np.asarray(plan.steps, dtype=np.int64)
    values = np.asarray(plan.lrs, dtype=np.float64)
    i = np.searchsorted(knots, steps, side="right")
    inner = np.clip(i, 1, len(knots) - 1)
    s0, s1 = knots[inner - 1], knots[inner]
    l0, l1 = values[inner - 1], values[inner]
    between = l0 + (l1 - l0) * (steps - s0) / (s1 - s0)
    return np.where(i == 0, values[0], np.where(i == len(knots), values[-1], between))


def quiet_counts(unstable: bool, quiet: int, damaged: Any) -> np.ndarray[Any, Any]:
    """The quiet counter after each step, as the ladder counts it for quiet steps (a
    damaged loss keeps an unstable job from counting)."""
    k = np.arange(len(damaged))
    if unstable:
        last = np.maximum.accumulate(np.where(damaged, k, -1))
        return np.where(last >= 0, k - last, quiet + k + 1)
    return quiet + k + 1
