"""Sharpness during training, on the user's probe, within a share of wall time.

Cadence is set by a time budget, not a step interval. An estimate starts only when the
seconds spent on curvature so far plus what it is expected to cost stay within
``budget`` (default 2%) of the wall time since ``attach``, and when the time since the
last one, times ``budget``, covers that cost (so estimates are spread out, not bunched
after a gap). The expected cost is a running mean of past estimates. The first estimate
is the exception: it runs at the first step (the sharpness at initialisation is the one
that says whether the LR plan is safe at all) and is not charged to the budget (see
``charge``). ``urgency`` raises the share (for a job approaching instability).

Each estimate starts from the previous one's eigenvector (warm start); it is run again
from a random vector when it did not converge or jumped by more than half, because a
warm start can sit on a former top eigenvector after the spectrum reorders.

Where it runs: on the training thread, right after ``mon.step``, in whatever mode the
model is in (see ``monitor/hvp.py`` for why train() mode is right and deterministic).
On a GPU the estimate reads back a few scalars (a sync), which the budget accounts for.
Memory: the double-backward graph holds ~2–3× the probe's activations, plus one vector
the size of the parameters for the warm start; size the probe batch for that.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch

from edgewatch.monitor.curvature import SharpnessEstimate, sharpness
from edgewatch.monitor.eigen import NotConvergedWarning

JUMP = 0.5  # relative change that makes a warm-started estimate suspect
WARM_SHARE = 0.25  # a warm start needs ~1/4 of a cold run's HVPs (bench/RESULTS.md, curvature)
RETRY_STEPS = 50  # after a failed attempt, wait RETRY_STEPS / budget steps
NEAR_EDGE = 0.8  # stability ratio from which curvature is measured more often
URGENT = 4.0  # how much more often


class CurvatureSchedule:
    def __init__(
        self,
        params: torch.nn.Module | list[torch.Tensor],
        optimizer: torch.optim.Optimizer,
        probe: Callable[[], torch.Tensor],
        budget: float,
        tol: float = 1e-3,
        max_iter: int = 20,
    ) -> None:
        self.params = params
        self.optimizer = optimizer
        self.probe = probe
        self.budget = budget
        self.tol = tol
        self.max_iter = max_iter
        self.urgency = 1.0
        # The budget is a share of this clock's time: wall time, unless a benchmark that
        # interleaves monitored and unmonitored loops lends one that counts only its own.
        self.clock: Callable[[], float] = time.monotonic
        self.started = self.clock()
        self.spent = 0.0  # seconds of curvature work so far
        self.last_cost = 0.0
        self.first_cost = 0.0  # the estimate at initialisation, outside the budget
        self.mean_cost = 0.0  # running mean of an estimate's seconds
        self.last_end = self.started
        self.steps = 0  # training steps seen (due() is asked once per step)
        self.estimates = 0  # successful ones
        self.attempts = 0
        self.vector: torch.Tensor | None = None
        self.last_value: float | None = None

    def due(self) -> bool:
        """Whether one more estimate keeps the curvature share within the budget."""
        self.steps += 1
        if self.budget <= 0:
            return False
        if self.attempts == 0:
            # The first estimate comes at the first step: the sharpness at initialisation
            # sets the critical LR (monitor/critical_lr.py), and a run started too hot
            # diverges within tens of steps. Later ones are paced by the budget.
            return True
        now = self.clock()
        elapsed = now - self.started
        expected = self.mean_cost
        share = self.budget * self.urgency
        paced = (now - self.last_end) * share >= expected
        return paced and self.spent + expected <= share * elapsed

    @property
    def seconds_total(self) -> float:
        """Seconds spent on curvature work so far, the first estimate included."""
        return self.spent + self.first_cost

    def follow(self, stability_ratio: float | None) -> None:
        """Measure URGENT times as often while the daemon sees the job near the edge."""
        near = stability_ratio is not None and stability_ratio >= NEAR_EDGE
        self.urgency = URGENT if near else 1.0

    def measure(self) -> tuple[SharpnessEstimate, float]:
        """Run one estimate; returns it and the seconds it took (warm, then cold if needed)."""
        start = time.perf_counter()
        with warnings.catch_warnings():
            # Non-convergence is reported in the record (residual, converged); the
            # training script's output is no place for it.
            warnings.simplefilter("ignore", NotConvergedWarning)
            est = self._estimate(self.vector)
            jumped = self.last_value is not None and abs(est.value - self.last_value) > JUMP * abs(
                self.last_value
            )
            if self.vector is not None and (not est.converged or jumped):
                est = self._estimate(None)
        seconds = time.perf_counter() - start
        self.charge(seconds)
        self.estimates += 1
        self.vector = est.vector.detach()
        self.last_value = est.value
        return est, seconds

    def failed(self, seconds: float) -> None:
        """An attempt raised (a broken probe): charge it, and try again only after
        RETRY_STEPS / budget steps, not at the next step."""
        self.charge(seconds)
        step_time = (self.clock() - self.started) / max(1, self.steps)
        self.mean_cost = max(self.mean_cost, RETRY_STEPS * step_time)

    def charge(self, seconds: float) -> None:
        """Account for one attempt (a failed one too: a broken probe is not retried each step).

        The first, cold estimate at initialisation is a one-off per run, like ``find_lr``,
        and is kept out of the budget: charged, a cold Lanczos run (~15 HVPs, ~45 steps'
        time) would hold the next estimate back for 45/budget steps, through the warmup
        where the next ones matter most. The next is expected to cost WARM_SHARE of it.
        """
        self.last_cost = seconds
        self.last_end = self.clock()
        self.attempts += 1
        if self.attempts == 1:
            self.first_cost = seconds
            self.mean_cost = WARM_SHARE * seconds  # what the next, warm-started one may cost
            return
        self.spent += seconds
        self.mean_cost = 0.7 * self.mean_cost + 0.3 * seconds

    def _estimate(self, v0: torch.Tensor | None) -> SharpnessEstimate:
        return sharpness(
            self.params, self.probe, self.optimizer, v0, tol=self.tol, max_iter=self.max_iter
        )
