"""Many steps at once, to the same result as one at a time. Pure floats (NumPy, SciPy).

The daemon feeds the forecast every step record it commits (a frame carries up to a few
thousand), and a Python call per step cost more than the insert itself (issue 11: the
end-to-end ingest fell from 75–82% of the raw insert rate to 61%). Nearly every step
changes nothing but a few running averages. So a block of steps is advanced in arrays:
the loss average and the precursors' averages by ``scipy.signal.lfilter`` (the same
products and sums, in the same order, as the scalar update: the results are equal to
the bit, which tests/test_forecast_batch.py checks), the running minimum by a cumulative
minimum, the plan's LR by the same interpolation as ``LRPlan.at``. The first step at
which anything could happen (a non-finite value, a loss excursion, a precursor over its
threshold, a crossing within the horizon, an LR off the plan, the end of a quiet
stretch) and every step of an unusual block go through ``JobForecast.observe_step``
itself, so the state machine has one implementation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from scipy.signal import lfilter

from edgewatch.monitor.plan import COMPRESS_TOLERANCE, LRPlan
from edgewatch.monitor.precursors import Excursion

if TYPE_CHECKING:
    from edgewatch.monitor.forecast import Alert, JobForecast

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


def observe_steps(forecast: JobForecast, records: Sequence[StepLike]) -> list[Alert]:
    """Feed ``records`` (in sequence order) as ``observe_step`` would, one by one.

    The cost stays O(1) per record however the steps go: a block is tried on a window
    that doubles while all of it is quiet; after a step that was not quiet, the next
    try looks at MIN_BLOCK records again, and where tries keep finding nothing quiet
    (a job that stays unstable, a crossing within the horizon) they back off, up to
    MAX_BACKOFF scalar steps between tries."""
    alerts: list[Alert] = []
    i, n = 0, len(records)
    window, backoff, wait = MIN_BLOCK, 0, 0
    while i < n:
        if wait == 0 and n - i >= MIN_BLOCK:
            quiet = _quiet_prefix(forecast, records, i, i + window)
            i += quiet
            if quiet == window:  # all quiet so far: look further at once
                window *= 2
                continue
            window = MIN_BLOCK
            backoff = 0 if quiet else min(max(1, 2 * backoff), MAX_BACKOFF)
            wait = backoff
        elif wait:
            wait -= 1
        if i < n:  # the step where something may happen: the scalar path decides
            r = records[i]
            alert = forecast.observe_step(
                r.step, r.lr, r.loss, r.grad_norm, r.update_norm, r.moment_ratio
            )
            if alert is not None:
                alerts.append(alert)
            i += 1
    return alerts


def _quiet_prefix(f: JobForecast, records: Sequence[StepLike], start: int, end: int) -> int:
    """Advance ``f`` over the longest run of ``records[start:end]`` in which nothing but
    the running averages moves; returns how many records that was (0: none)."""
    with np.errstate(all="ignore"):  # overflow to inf is data, as in float arithmetic
        return _advance_quietly(f, records[start:end])


def _advance_quietly(f: JobForecast, block: Sequence[StepLike]) -> int:
    from edgewatch.monitor.forecast import per_lr

    if f.state == "diverged" or f.loss.seen == 0:
        return 0
    losses = [r.loss for r in block]
    grads = [r.grad_norm for r in block]
    if None in losses or None in grads:
        return 0  # unusual clients: one at a time
    steps = np.fromiter((r.step for r in block), np.int64, len(block))
    lrs = np.fromiter((r.lr for r in block), np.float64, len(block))
    loss = np.asarray(losses, dtype=np.float64)
    ok = np.isfinite(np.asarray(grads, dtype=np.float64)) & (loss > 0) & np.isfinite(loss)
    ok &= np.diff(steps, prepend=f.step) > 0  # resends and reordering: one at a time
    s = f.settings
    short, mean, spread, floor = _loss_health(f, np.where(ok, loss, 1.0).tolist())
    excess = short - floor
    h = f.loss  # LossHealth.excursion_limit, on arrays, in its order of operations
    limit = np.maximum(
        h.log_floor, np.minimum(h.log_excursion + h.band * spread, h.noise_widths * spread)
    )
    ok &= excess < limit
    damaged = excess >= math.log(s.damage) + f.loss.band * spread
    if f.nearest is not None:
        ok &= f.nearest[0] - steps > s.horizon
    ok &= ~_off_plan(f, steps, lrs)
    precursors = []
    for excursion, values in (
        (f.grad_precursor, grads),
        (f.update_precursor, [per_lr(r.update_norm, r.lr) for r in block]),
        (f.moment_precursor, [r.moment_ratio for r in block]),
    ):
        if excursion is not None:
            advanced = _advance(excursion, values)
            if advanced is None:
                return 0
            ok &= advanced[0]
            sent = values[0] is not None
            precursors.append((excursion, advanced[1], advanced[2], sent))
    quiet = _quiet_counts(f, damaged)
    ok &= quiet < s.recover_steps if f.state != "stable" else True
    m = len(block) if ok.all() else int(np.argmin(ok))  # the first step that is not quiet
    if m == 0:
        return 0
    last = m - 1
    f.step, f.lr = int(steps[last]), float(lrs[last])
    f.recent_lrs.extend(lrs[max(0, m - (f.recent_lrs.maxlen or m)) : m].tolist())
    health = f.loss
    health.short, health.mean = float(short[last]), float(mean[last])
    health.spread, health.floor = float(spread[last]), float(floor[last])
    health.last = math.log(float(loss[last]))
    health.seen += m
    for excursion, ex_short, ex_base, sent in precursors:
        if sent:
            excursion.short, excursion.base = float(ex_short[last]), float(ex_base[last])
            excursion.seen += m
            excursion.over = 0
    f.quiet = int(quiet[last])
    return m


def _ema(weight: float, x: Any, before: float) -> Any:
    """weight·x + (1 − weight)·previous, step after step, as the scalar updates compute it."""
    return lfilter([weight], [1.0, -(1 - weight)], x, zi=[(1 - weight) * before])[0]


def _loss_health(f: JobForecast, losses: list[float]) -> tuple[Any, Any, Any, Any]:
    """LossHealth.update over the block: short and slow averages of log loss, the spread,
    the running minimum (math.log, as update() takes it)."""
    h = f.loss
    x = np.array(list(map(math.log, losses)))  # math.log: as update() takes it
    short = _ema(h.fast, x, h.short)
    mean = _ema(h.slow, x, h.mean)
    before = np.concatenate(([h.last], x[:-1]))
    spread = _ema(h.slow, np.abs(x - before), h.spread)
    floor = np.minimum.accumulate(np.minimum(mean, h.floor))
    return short, mean, spread, floor


def _off_plan(f: JobForecast, steps: np.ndarray[Any, Any], lrs: np.ndarray[Any, Any]) -> Any:
    """Per step, whether its LR leaves what the forecast assumed (plan.py's lr_moved)."""
    if f.plan is not None:
        expected = _plan_at(f.plan, steps) * f.lr_scale
    elif f.lr_assumed is not None:
        expected = np.full(len(steps), f.lr_assumed)
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


def _advance(
    e: Excursion, values: list[float | None]
) -> tuple[Any, np.ndarray[Any, Any], np.ndarray[Any, Any]] | None:
    """The excursion's averages over the block if its baseline never freezes and it never
    goes over its threshold (else the mask is False from there); None if a value is not a
    positive finite number or the history is empty (one at a time then)."""
    if all(v is None for v in values):  # a signal this client does not send: no change
        return (
            np.ones(len(values), dtype=bool),
            np.full(len(values), e.short),
            np.full(len(values), e.base),
        )
    if e.seen == 0 or any(v is None or not (math.isfinite(v) and v > 0) for v in values):
        return None
    x = np.array([math.log(v) for v in values])  # type: ignore[arg-type]  # math.log: as update()
    short, base = _ema(e.fast, x, e.short), _ema(e.slow, x, e.base)
    before = np.concatenate(([e.base], base[:-1]))
    warm = e.seen + np.arange(1, len(x) + 1) >= e.warm
    fine = (short - before < e.log_threshold) & ~(warm & (short - base >= e.log_threshold))
    return fine, short, base


def _quiet_counts(f: JobForecast, damaged: Any) -> np.ndarray[Any, Any]:
    """The quiet counter after each step, as ``_judge`` counts it for quiet steps."""
    k = np.arange(len(damaged))
    if f.state == "unstable":  # a damaged loss keeps an unstable job from counting
        last = np.maximum.accumulate(np.where(damaged, k, -1))
        return np.where(last >= 0, k - last, f.quiet + k + 1)
    return f.quiet + k + 1
