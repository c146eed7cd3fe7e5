"""Curvature during training, on the user's probe, within a share of wall time, without
stalling a step for long.

Two measurements, each paced by a time budget rather than a step interval:

- **Sharpness** λ_max (λ_max(P⁻¹H) for Adam) by Lanczos on Hessian-vector products,
  through ``monitor.tracking.SharpnessTracker``: an estimate is spread over training
  steps, at most ``hvps_per_step`` HVPs (and one probe graph) per step, so no step waits
  for a whole estimate (issue 12: an estimate used to hold one step for 17–70 steps'
  time). The slice that finishes an estimate adds one HVP along the optimizer's last
  update (Bai et al. 2025, arXiv 2506.04805).
- **Critical sharpness** λ_c = 2/η_c along the last update, from a handful of probe
  forwards (``monitor.line_search``; Kalra et al. 2026, arXiv 2601.16979): forward-only,
  a fraction of an HVP estimate's cost, so it fills the gaps between them.

Pacing: a measurement starts only when the seconds spent on it so far plus what it is
expected to cost stay within its share of ``budget`` of the wall time since ``attach``,
and when the time since the last one, times that share, covers the cost (estimates are
spread out, not bunched after a gap). The share is split ``CRITICAL_SHARE`` to the
critical sharpness and the rest to λ_max; the expected cost is a running mean. Slices of
an estimate in progress always run (they are charged). The first λ_max estimate starts
at the first step (the sharpness at initialisation says whether the LR plan is safe);
it is charged like the others, so on a short run it uses the budget of many steps and
the next estimate waits for the budget to catch up (a cold estimate costs about four
warm ones). Near the edge
(``urgency``) the spreading is relaxed fourfold, so savings are spent sooner; the share
itself is a ceiling (measured in ``make bench-predict``: the share spent, per run).

Where it runs: on the training thread, right after ``mon.step``, in whatever mode the
model is in; the global RNG states, buffers and ``.grad`` are left as they were
(``monitor/isolation.py``), so the run is the one it would have been without edgewatch.
On a GPU a slice reads back a few scalars (a sync), which the budget accounts for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Literal

import torch

from edgewatch.monitor.direction import update_direction
from edgewatch.monitor.hvp import flat_params
from edgewatch.monitor.line_search import CriticalSharpness, critical_sharpness
from edgewatch.monitor.tracking import SharpnessTracker, TrackedEstimate
from edgewatch.schemas import CRITICAL_METHOD

Kind = Literal["sharpness", "critical"]
WARM_SHARE = 0.25  # a warm estimate needs ~1/4 of the cold first one (bench/RESULTS.md)
# Share of the curvature budget for the forward-only critical sharpness, when it is asked
# for (``critical=True``): off by default, as it added nothing to the predictor on runs
# it was not tuned on (bench/RESULTS.md, "What each signal adds"), and it costs a share
# of the budget the λ_max estimates would have had.
CRITICAL_SHARE = 0.3
CRITICAL_FORWARDS = 5  # probe forwards per critical-sharpness search
RETRY_STEPS = 50  # after a failed attempt, wait RETRY_STEPS / budget steps
NEAR_EDGE = 0.8  # stability ratio from which curvature is measured more often
URGENT = 4.0  # how much more often


class _Pace:
    """Spending of one kind of measurement against its share of the wall time."""

    def __init__(self, share: float, started: float) -> None:
        self.share = share
        self.spent = 0.0  # charged seconds
        self.mean_cost = 0.0  # running mean of one measurement's seconds
        self.last_end = started
        self.count = 0

    def allows(self, now: float, elapsed: float, urgency: float) -> bool:
        # Urgency spends what was saved sooner; the share itself is never exceeded.
        paced = (now - self.last_end) * self.share * urgency >= self.mean_cost
        return paced and self.spent + self.mean_cost <= self.share * elapsed

    def charge(self, seconds: float, now: float) -> None:
        self.spent += seconds
        self.last_end = now

    def finished(self, seconds: float) -> None:
        """One whole measurement done, costing ``seconds`` in all."""
        self.count += 1
        self.mean_cost = seconds if self.count == 1 else 0.7 * self.mean_cost + 0.3 * seconds


class CurvatureSchedule:
    def __init__(
        self,
        target: torch.nn.Module | list[torch.Tensor],
        optimizer: torch.optim.Optimizer,
        probe: Callable[[], torch.Tensor],
        budget: float,
        *,
        hvps_per_step: int = 2,
        critical: bool = False,
    ) -> None:
        self.target = target
        self.params = flat_params(target)
        self.optimizer = optimizer
        self.probe = probe
        self.budget = budget
        self.tracker = SharpnessTracker(target, probe, optimizer, hvps_per_step=hvps_per_step)
        self.urgency = 1.0
        # The budget is a share of this clock's time: wall time, unless a benchmark that
        # interleaves monitored and unmonitored loops lends one that counts only its own.
        self.clock: Callable[[], float] = time.monotonic
        self.started = self.clock()
        critical_share = CRITICAL_SHARE if critical else 0.0
        self.paces: dict[Kind, _Pace] = {
            "sharpness": _Pace(budget * (1 - critical_share), self.started),
            "critical": _Pace(budget * critical_share, self.started),
        }
        self.first_cost = 0.0  # of the first λ_max estimate (cold, so dearer than the rest)
        self.largest_cost = 0.0  # the dearest single measurement after the first
        self._estimate_seconds = 0.0  # of the λ_max estimate in progress, all its slices
        self.steps = 0  # training steps seen (due() is asked once per step)
        self.attempts = 0  # slices and searches started
        self.estimates = 0  # λ_max estimates finished
        self.critical_found = 0  # critical-sharpness searches that found a step (each sent)
        self.failures = 0

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Count the budget on ``clock`` from now on (a benchmark that interleaves loops
        lends each the time that is its own)."""
        self.clock = clock
        self.started = clock()
        for pace in self.paces.values():
            pace.last_end = self.started

    @property
    def spent(self) -> float:
        """Seconds charged to the budget so far."""
        return sum(p.spent for p in self.paces.values())

    @property
    def seconds_total(self) -> float:
        """Seconds spent on curvature work so far."""
        return self.spent

    def due(self) -> Kind | None:
        """What to measure at this step, if anything (asked once per step)."""
        self.steps += 1
        if self.budget <= 0:
            return None
        if self.tracker.in_progress or self.attempts == 0:
            return "sharpness"  # an estimate under way goes on; the first one starts now
        now = self.clock()
        elapsed = now - self.started
        for kind, pace in self.paces.items():
            if pace.share > 0 and pace.allows(now, elapsed, self.urgency):
                return kind
        return None

    def follow(self, stability_ratio: float | None) -> None:
        """Near the edge, as the daemon sees it, spend the unspent share URGENT times sooner."""
        near = stability_ratio is not None and stability_ratio >= NEAR_EDGE
        self.urgency = URGENT if near else 1.0

    def slice(self) -> tuple[TrackedEstimate | None, float]:
        """One slice of the λ_max estimate; the estimate when it finished, and its seconds
        over all its slices (else None and the slice's seconds)."""
        first = self.tracker.last is None
        start = time.perf_counter()
        self.attempts += 1
        est = self.tracker.advance()
        seconds = time.perf_counter() - start
        self._estimate_seconds += seconds
        self.paces["sharpness"].charge(seconds, self.clock())  # the first one too
        if est is None:
            return None, seconds
        self.estimates += 1
        total, self._estimate_seconds = self._estimate_seconds, 0.0
        if first:  # what the next, warm-started one may cost
            self.first_cost = total
            self.paces["sharpness"].mean_cost = WARM_SHARE * total
        else:
            self.paces["sharpness"].finished(total)
            self.largest_cost = max(self.largest_cost, total)
        return est, total

    def critical(self, lr: float) -> tuple[CriticalSharpness | None, float]:
        """The critical sharpness along the last update (None when there is no update)."""
        start = time.perf_counter()
        self.attempts += 1
        direction = update_direction(self.optimizer, self.params)
        result = None
        if direction is not None and lr > 0:
            result = critical_sharpness(
                self.target, self.probe, direction, lr, max_forwards=CRITICAL_FORWARDS
            )
        seconds = time.perf_counter() - start
        pace = self.paces["critical"]
        pace.charge(seconds, self.clock())
        pace.finished(seconds)
        self.largest_cost = max(self.largest_cost, seconds)
        return result, seconds

    def measure(self, kind: Kind, lr: float) -> dict[str, Any] | None:
        """Run ``kind``; the fields of its Sharpness record once there is one to send."""
        if kind == "critical":
            found, seconds = self.critical(lr)
            if found is None or not math.isfinite(found.lambda_c):
                return None  # no update yet, or no rise within the search: nothing to say
            self.critical_found += 1
            return {
                "value": found.lambda_c,
                "method": CRITICAL_METHOD,
                "matvecs": 0,
                "seconds": seconds,
                "lr": lr,
            }
        est, seconds = self.slice()
        if est is None:
            return None
        return {
            "value": est.value,
            "preconditioned": est.preconditioned,
            "method": "lanczos",
            "matvecs": est.matvecs,
            "residual": est.residual,
            "seconds": seconds,
            "lr": lr,
            "update_curvature": _finite(
                est.update_curvature_preconditioned if est.preconditioned else est.update_curvature
            ),
            "eta_max": _finite(est.eta_max),
        }

    def failed(self, kind: Kind, seconds: float) -> None:
        """An attempt raised (a broken probe): charge it, and let neither kind try again
        before RETRY_STEPS / budget steps (they share the probe), not at the next step."""
        self.failures += 1
        self.paces[kind].charge(seconds, self.clock())
        step_time = (self.clock() - self.started) / max(1, self.steps)
        for pace in self.paces.values():
            pace.mean_cost = max(pace.mean_cost, RETRY_STEPS * step_time)
            pace.last_end = self.clock()
        if kind == "sharpness":
            self.tracker = SharpnessTracker(
                self.target, self.probe, self.optimizer, hvps_per_step=self.tracker.hvps_per_step
            )  # drop the broken estimate: the next starts afresh
            self._estimate_seconds = 0.0


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
