"""Curvature during training, on the user's probe, where the forecast needs it, within
a share of the run's time, without stalling a step for long.

Two measurements: **sharpness** λ_max (λ_max(P⁻¹H) for Adam) by Lanczos on HVPs through
``monitor.tracking.SharpnessTracker``, in slices of a few HVPs (and one probe graph) a
step, plus one HVP along the last update when it finishes (Bai et al. 2025, arXiv
2506.04805); and, when asked for, the **critical sharpness** (``client/critical.py``).

The budget: the share ``budget`` of the run's training time, counted in the run's own
median step time (``pacing.StepClock``, curvature left out), not in seconds, so that two
machines give the same schedule (and the start vectors are seeded, START_SEED); slices
are charged their HVPs and graphs at the lowest cost of one (``pacing.Spending``).
Amortised over the run: with ``total_steps`` known the allowance is budget ×
total_steps step-times, and cadence estimates spread what is free of it (less what the
planned rises in view need) over the steps left; ``rise`` and ``edge`` estimates may
spend ahead, never past the allowance (a rise it cannot cover is logged once); ``stir``
estimates only what the rises in view leave free. A run of unknown length is expected
to last max(twice its steps so far, UNKNOWN_RUN). The first estimate always starts and
may use FIRST_SHARE of the allowance, whatever the rises in view want: later ones start
warm from it, and one cut short (flagged unconverged, ``_hvp_cap``) read 3.5× low and
its successor restarted cold (bench/RESULTS.md, "The first estimate's share").

Where it runs: on the training thread, after ``mon.step``, in the model's mode; the
global RNG states, buffers and ``.grad`` are left as they were (``monitor/isolation.py``).
On a GPU a slice reads back a few scalars (a sync), which the budget accounts for.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import torch

from edgewatch.client.critical import CRITICAL_SHARE, CriticalSearches
from edgewatch.client.pacing import MAX_SLICE_HVPS, HvpLaps, Spending, StepClock, Stir
from edgewatch.client.readings import estimate_fields
from edgewatch.client.rises import PlanView, Rises
from edgewatch.client.schedule import PlanSource
from edgewatch.monitor.difference import REL_STEPS
from edgewatch.monitor.hvp import flat_params
from edgewatch.monitor.progress import TrackedEstimate, unit_kind
from edgewatch.monitor.thresholds import uses_preconditioned_sharpness
from edgewatch.monitor.tracking import SharpnessTracker

log = logging.getLogger("edgewatch.client")
Kind = Literal["sharpness", "critical"]
Reason = Literal["first", "rise", "stir", "edge", "cadence"]
REASONS: tuple[Reason, ...] = ("first", "rise", "stir", "edge", "cadence")
SETTLE_STEPS = 50  # the daemon's default ``settle_steps`` (monitor/settings.py)
HORIZON = 100  # the daemon's default ``horizon``
WARM_SHARE = 0.25  # a warm estimate needs ~1/4 of the cold first one (bench/RESULTS.md)
WARM_HVPS_GUESS = 8  # HVPs of a warm estimate before one has been seen
RETRY_STEPS = 50  # after a failed attempt, wait RETRY_STEPS / budget steps
NEAR_EDGE = 0.8  # stability ratio from which curvature is measured more often
URGENT = 4.0  # how much more often
LEAD = 20  # steps of slack before the horizon, on top of an estimate's slices
MIN_GAP = 10  # steps between a stir or cadence estimate and the one before
UNKNOWN_RUN = 500  # steps a run of unknown length is expected to last, at least
MAX_HVPS = 30  # Lanczos HVPs per estimate at most (the tracker's default)
FIRST_SHARE = 0.5  # of the allowance the first, cold estimate may use
START_SEED = 0  # a few-HVP cold estimate moves with its start (RESULTS.md, benchmark v8)
UNMEASURED = (
    "edgewatch: the curvature budget (%.3g of the run) is spent: no estimate before the LR "
    "rise planned after step %d; the forecast rests on the estimate of step %d. A higher "
    "attach(budget=...) (0.1 for a short run of millisecond steps) buys one."
)


class CurvatureSchedule:
    """When to measure curvature (``due``), and the measuring (``measure``). A λ_max
    estimate starts for a reason, counted in ``mon.stats``; the daemon multiplies the last
    usable one by the *planned* LR, so one recent enough must precede each rise of the plan:
    - ``first``: the first estimate the forecast can use, as soon as it can use one:
      step 3 for SGD and heavy ball (is the plan safe from the start?), or late before a
      sharp rise close ahead of a flat plan (``Rises.first_waits``); step ``settle_steps``
      (50) for Adam-type optimizers, whose earlier estimates the forecast leaves out (Cohen
      et al. 2022, arXiv 2207.14484). A too-hot start shows in the loss within steps.
    - ``rise``: the planned LR within ``horizon`` + lead steps exceeds 1.5 × the highest
      LR the last estimate was taken to vouch for: each stretch of a warmup, a scheduled
      jump, a cyclic restart; before a sharp rise, once more within half a horizon of
      it; and the plan's peak in view (a warmup's end) once within a horizon of it
      (``rises.Rises``: the sharpness may grow in between). The lead (the estimate's
      expected slices plus LEAD) makes it arrive before the daemon's horizon reaches
      the rise. The plan comes from the job's scheduler, stepped ahead on this thread
      (``rises.PlanView``: the sender thread's copy may arrive too late).
    - ``stir``: the loss or gradient norm jumped off its running mean (``pacing.Stir``).
    - ``cadence`` / ``edge``: otherwise at a steady cadence, so that progressive
      sharpening's trend is known; URGENT times more often when the daemon's last Ack put
      the stability ratio at NEAR_EDGE or above (``follow``), counted as ``edge``.
    """

    def __init__(
        self,
        target: torch.nn.Module | list[torch.Tensor],
        optimizer: torch.optim.Optimizer,
        probe: Callable[[], torch.Tensor],
        budget: float,
        *,
        hvps_per_step: int = 2,
        critical: bool = False,
        total_steps: int | None = None,
        plans: PlanSource | None = None,
        settle_steps: int = SETTLE_STEPS,
        horizon: int = HORIZON,
    ) -> None:
        self.target = target
        self.params = flat_params(target)
        self.optimizer = optimizer
        self.probe = probe
        self.budget = budget
        self.total_steps = total_steps
        self.settle_steps = settle_steps
        self.horizon = horizon
        self.adam = uses_preconditioned_sharpness(type(optimizer).__name__)
        self.hvps_per_step = hvps_per_step
        self.tracker = self._new_tracker()
        self.urgency = 1.0
        # Step times are read on this clock: wall time, unless a benchmark that
        # interleaves monitored and unmonitored loops lends one that counts only its own.
        self.clock: Callable[[], float] = time.monotonic
        self.ticks = StepClock(self.clock)
        self.view = PlanView(plans, total_steps) if plans is not None else None
        self.rises = Rises(self.view, horizon)
        self.stir = Stir()
        self.spending = Spending(self.ticks)
        share = budget * CRITICAL_SHARE if critical else 0.0
        searches = (target, self.params, optimizer, probe, share, self.spending)
        self.critical = CriticalSearches(*searches)
        self.first_units = 0  # of the first λ_max estimate (cold, the dearest)
        self.warm_units = 0.0  # running mean of a later estimate's units
        self.warm_hvps = float(WARM_HVPS_GUESS)  # running mean of a later one's HVPs
        self._estimate_units = 0  # of the λ_max estimate in progress: graphs and HVPs
        self._estimate_seconds = 0.0  # ... and the seconds its slices took
        self._estimate_hvps = 0  # of which HVPs
        self.steps = 0  # training steps seen (due() is asked once per step)
        self.step = -1  # the current step's number
        self.attempts = 0  # slices and searches started
        self.estimates = 0  # λ_max estimates finished
        self.unconverged = 0  # of which ended at their HVP cap (``_hvp_cap``)
        self.reasons = dict.fromkeys(REASONS, 0)  # finished estimates per reason
        self.reason: Reason = "first"  # of the estimate under way (or the last)
        self.last_end = -(10**9)  # step the last estimate finished (or failed) at
        self.not_before = 0  # after a failure, no new attempt before this step
        self.failures = 0
        self.rise_unmeasured = 0  # step a planned rise first found the budget spent
        self._refresh = False  # the rise estimate about to start is a refresh

    def _new_tracker(self) -> SharpnessTracker:
        hvps, seed = self.hvps_per_step, START_SEED
        return SharpnessTracker(
            self.target, self.probe, self.optimizer, hvps_per_step=hvps, seed=seed
        )

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Read step times on ``clock`` from now on (bench/instability/harness.py lends one)."""
        self.clock = clock
        self.ticks.restart(clock)

    @property
    def spent(self) -> float:
        """Seconds of curvature work so far, as it took (the budget is in step times)."""
        return self.spending.seconds

    def expected_steps(self) -> int:
        """The run's length: ``total_steps``, else a guess that grows with the run."""
        if self.total_steps:
            return max(self.total_steps, self.steps)
        return max(2 * self.steps, UNKNOWN_RUN)

    def allowance(self) -> float:
        """The λ_max estimates' share of the run's expected time, in step times."""
        return (self.budget - self.critical.share) * self.expected_steps()

    def free(self) -> float:
        """Step times of the allowance not yet spent."""
        return self.allowance() - (self.spending.spent() - self.spending.critical)

    def reserve(self) -> float:
        """Step times kept back from the cadence for what the planned rises in view want."""
        return self.rises.pending(self.step) * self.expected_cost()

    def expected_cost(self) -> float:
        """Step times a (warm) estimate is expected to cost."""
        guess = max(WARM_SHARE * self.first_units, 1.5 * WARM_HVPS_GUESS)  # 2 HVPs a graph
        units = self.warm_units if self.estimates > 1 else guess
        return units * self.spending.per_unit(self._warm_kind()) + self.comparison_cost()

    def comparison_cost(self) -> float:
        """Step times of the estimate under way's (or the next's) comparison of difference
        and exact products, if it makes one: a gradient per step tried (REL_STEPS)."""
        compares = self.tracker.compares_next
        return len(REL_STEPS) * self.spending.per_unit("difference") if compares else 0.0

    def _warm_kind(self) -> str:  # the unit kind most later estimates run on
        return unit_kind(self.tracker.difference_step is None)

    def _next_kind(self) -> str:  # the unit kind of the next slice
        return unit_kind(self.tracker.next_exact)

    def due(
        self,
        step: int | None = None,
        lr: float | None = None,
        loss: object = None,
        grad_norm: object = None,
    ) -> Kind | None:
        """What to measure at this step, if anything (asked once per step, after it).
        ``lr``: the LR in force at this step; ``loss``, ``grad_norm``: its readings."""
        self.ticks.tick(self.spending.lap())
        self.steps += 1
        self.step = self.steps - 1 if step is None else step
        if self.budget <= 0:
            return None
        if self.tracker.in_progress:
            return "sharpness"  # an estimate under way goes on
        stirred = self.stir(loss, grad_norm)
        if self.view is not None and lr is not None:
            begun = time.perf_counter()
            if self.view.update(self.step, float(lr)):
                self.rises.replanned(self.step)
                self.spending.charge(time.perf_counter() - begun)
        if self.step < self.not_before:
            return None
        reason = self._why(stirred, lr)
        if reason is not None:
            self.reason = reason
            self.rises.started(self.step, lr, self.lead(), refresh=self._refresh)
            self._refresh = False
            return "sharpness"
        if self.critical.due(self.step, self.steps):
            self.attempts += 1
            return "critical"
        return None

    def _why(self, stirred: bool, lr: float | None) -> Reason | None:
        if self.tracker.last is None:
            # Adam's estimates before settle_steps are left out of the forecast; before a
            # few steps are timed a slice has no price (benchmark v4, bench/RESULTS.md).
            ready = not self.adam or self.step >= self.settle_steps
            if not self.adam and self.rises.first_waits(self.step, lr, self.lead()):
                return None
            return "first" if ready and self.ticks.timed else None
        cost = self.expected_cost()
        free = self.free()
        # A rise goes first: what is free buys at least a slice (``_hvp_cap`` ends it).
        age = self.step - self.last_end
        affordable = int(free / cost) if cost > 0 else 0
        slice_cost = (self.tracker.hvps_per_step + 1) * self.spending.per_unit(self._next_kind())
        wanted = self.rises.due(self.step, lr, self.lead(), age, affordable)
        if wanted is not None:
            if free >= slice_cost:
                self._refresh = wanted == "refresh"
                return "rise"
            if not self.rise_unmeasured:  # say so once: the forecast there is blind
                self.rise_unmeasured = self.step
                log.warning(UNMEASURED, self.budget, self.step, self.last_end)
        if not free >= cost:  # also False for NaN or inf (no step timed yet)
            return None
        if age < MIN_GAP:
            return None
        free -= self.reserve()
        if not free >= cost:  # the rises in view come first
            return None
        if stirred:
            return "stir"
        # Spread what is free over the steps left: one estimate per `cost` of it.
        left = max(self.expected_steps() - self.step, 1)
        interval = max(left * cost / free, MIN_GAP) / self.urgency
        if age >= interval:
            return "edge" if self.urgency > 1 else "cadence"
        return None

    def lead(self) -> int:
        """Steps from the start of an estimate to the horizon's reach: its slices + LEAD."""
        return self.horizon + math.ceil(self.warm_hvps / self.tracker.hvps_per_step) + LEAD

    def _hvp_cap(self) -> int:
        """HVPs the estimate under way may reach: what the allowance covers at the price
        of one, and the run's steps left, between one more slice and MAX_HVPS. A dear
        cold estimate so ends early, unconverged (flagged, with its bound), rather than
        overspend the run's share or be cut off unreported by the run's end."""
        floor = self._estimate_hvps + self.tracker.hvps_per_step
        per_hvp = self.spending.per_unit(self._next_kind())
        if not per_hvp:
            return MAX_HVPS  # the first slice: its cost is not known before it
        free = self.free()
        if self.tracker.last is None:  # the first leaves the other half to the rises
            free -= (1 - FIRST_SHARE) * self.allowance()
        elif self.reason != "rise":
            free -= self.reserve()
        free -= self.comparison_cost()
        more = int(free / per_hvp) - 1  # one unit for the probe graph
        cap = min(MAX_HVPS, self._estimate_hvps + more)
        if self.total_steps:
            cap = min(cap, floor + (self.total_steps - 1 - self.step) * self.hvps_per_step)
        return max(floor, cap)

    def follow(self, stability_ratio: float | None) -> None:
        """Near the edge, as the daemon sees it, estimate URGENT times more often."""
        near = stability_ratio is not None and stability_ratio >= NEAR_EDGE
        self.urgency = URGENT if near else 1.0

    def slice(self) -> tuple[TrackedEstimate | None, float]:
        """One slice of the λ_max estimate; the estimate when it finished, and its seconds
        over all its slices (else None and the slice's seconds)."""
        first = self.tracker.last is None
        hvps = self.tracker.hvps_total
        kind = self._next_kind()
        nominal = self.tracker.hvps_per_step = self.spending.slice_hvps(self.hvps_per_step, kind)
        cap = self.tracker.max_hvps = self._hvp_cap()
        start = time.perf_counter()
        more, laps = None, HvpLaps(start)
        # An estimate the allowance ends within MAX_SLICE_HVPS runs in one slice: split,
        # its Krylov space is cut at each slice, and 4 HVPs in two slices read 0.01-0.94
        # of λ_max where one slice read 0.53-1.00 (bench/RESULTS.md, "One slice").
        if not self.spending.per_unit(kind):  # the run's first slice: priced as it runs
            self.tracker.hvps_per_step = MAX_SLICE_HVPS
            more = self._first_slice_goes_on(laps)
        elif cap < MAX_HVPS and cap - self._estimate_hvps <= MAX_SLICE_HVPS:
            self.tracker.hvps_per_step = cap - self._estimate_hvps
        self.attempts += 1
        est = self.tracker.advance(more)
        self.tracker.hvps_per_step = nominal  # what the schedule prices a slice at
        seconds = time.perf_counter() - start
        units = sum(self.tracker.slice_units.values())  # probe graph or gradient, products
        self.spending.charge(seconds, self.tracker.slice_units)  # the first one too
        if laps.cheapest is not None:
            self.spending.undercut(kind, laps.cheapest)
        self._estimate_units += units
        self._estimate_seconds += seconds
        self._estimate_hvps += self.tracker.hvps_total - hvps
        if est is None:
            return None, seconds
        total, took = self._estimate_units, self._estimate_seconds
        self._estimate_units, self._estimate_hvps, self._estimate_seconds = 0, 0, 0.0
        self.estimates += 1
        self.unconverged += not est.converged
        self.reasons[self.reason] += 1
        self.last_end = self.step
        if first:
            self.first_units = total
        else:
            later = self.estimates > 2
            self.warm_units = 0.7 * self.warm_units + 0.3 * total if later else total
            self.warm_hvps = 0.7 * self.warm_hvps + 0.3 * est.matvecs if later else est.matvecs
        return est, took

    def _first_slice_goes_on(self, laps: HvpLaps) -> Callable[[int], bool]:
        """Whether the run's first slice, unpriced, runs another HVP after ``done``: its
        cheapest HVP gives the price (the probe graph counted as one more). It runs up to
        MAX_SLICE_HVPS (a stall of a few steps, once) or until the first estimate's share
        is spent, which ends the estimate (``max_hvps``)."""
        least = 2 * self.hvps_per_step  # as in two slices: a 2-HVP Krylov space reads little

        def goes_on(done: int) -> bool:
            seconds, step = laps.lap(), self.ticks.recent()
            if done < least or seconds is None or not step:
                return done < least
            price = seconds / step
            share = self.free() - (1 - FIRST_SHARE) * self.allowance()
            affordable = int(share / price) - 1
            if done >= affordable:
                self.tracker.max_hvps = done  # the share is spent: the estimate ends here
                return False
            return True

        return goes_on

    def measure(self, kind: Kind, lr: float) -> dict[str, Any] | None:
        """Run ``kind``; the fields of its Sharpness record once there is one to send."""
        if kind == "critical":
            return self.critical.measure(self.step, lr)
        est, seconds = self.slice()
        return None if est is None else estimate_fields(est, seconds, lr)

    def failed(self, kind: Kind, seconds: float) -> None:
        """An attempt raised (a broken probe): charge it, and let neither kind try again
        before RETRY_STEPS / budget steps (they share the probe), not at the next step."""
        self.failures += 1
        self.spending.charge(seconds)
        self.not_before = self.step + math.ceil(RETRY_STEPS / max(self.budget, 1e-9))
        if kind == "sharpness":
            self.tracker = self._new_tracker()  # the broken estimate is dropped
            self._estimate_units, self._estimate_hvps, self._estimate_seconds = 0, 0, 0.0

    def stats(self) -> dict[str, int]:
        """For ``mon.stats``: estimates per reason, HVPs, estimates that ended at their
        cap, and the curvature share of the run's time in per mille (in step times)."""
        out = {f"estimates_{reason}": count for reason, count in self.reasons.items()}
        share = self.spending.spent() / max(self.steps, 1)
        out["curvature_hvps"] = self.tracker.hvps_total
        out["unconverged_estimates"] = self.unconverged
        out["rise_unmeasured_step"] = self.rise_unmeasured
        out["curvature_permille"] = round(1000 * share) if math.isfinite(share) else 0
        return out
