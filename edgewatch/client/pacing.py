"""What the curvature schedule (``client/curvature.py``) reads to decide: the run's own
step time, the planned LR of the coming steps, and whether the loss or gradient norm
stirs. Training thread only; each costs a few µs a step, and only when a probe is given.
"""

from __future__ import annotations

import collections
import logging
import math
import statistics
from collections.abc import Callable

from edgewatch.client.schedule import PlanSource
from edgewatch.monitor.plan import lr_moved

log = logging.getLogger("edgewatch.client")

STEP_WINDOW = 101  # recent step times the median is taken over
MEDIAN_EVERY = 16  # steps between recomputations of the median
PLAN_AHEAD = 1024  # steps of planned LR kept in view (~3 ms to step a torch scheduler)
REPLAN_GAP = 64  # steps between new views taken because the LR left the plan
STIR_Z = 4.0  # deviations (of the log) from the running mean that count as a stir
STIR_FLOOR = 0.1  # ... and at least this much in the log (10%): float noise is no stir
STIR_RATE = 0.05  # weight of the newest value in the running mean and variance
STIR_WARM = 20  # values before a stir can be seen
UNIT_WINDOW = 31  # recent slices whose median cost per HVP is charged


class StepClock:
    """The median training step, in the clock's seconds, curvature work left out.

    The budget is counted in these units, not in seconds, so that two machines (or a
    loaded and an idle one) give the same schedule: an HVP costs about the same number
    of training steps wherever it runs. The median, not the mean, so that a stall (a
    checkpoint, a page fault, the daemon's thread) does not move it.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.times: collections.deque[float] = collections.deque(maxlen=STEP_WINDOW)
        self.last: float | None = None
        self._unit: float | None = None
        self._age = 0

    def restart(self, clock: Callable[[], float]) -> None:
        self.clock, self.last = clock, None

    def tick(self, work: float) -> None:
        """One training step ended (called once per ``mon.step``), with ``work`` seconds
        of curvature charged since the last tick, left out of the step (as charged: a
        lent clock, bench/harness.py, advances by the seconds charged; on the wall clock
        a slow slice's excess falls on a step, which the median ignores)."""
        now = self.clock()
        if self.last is not None:
            self.times.append(max(now - self.last - work, 0.0))
            self._age += 1
        self.last = now

    @property
    def unit(self) -> float | None:
        """Seconds per training step (median), None until a step has been timed."""
        if self.times and (self._unit is None or self._age >= MEDIAN_EVERY):
            median = statistics.median(self.times)
            self._unit = median if median > 0 else None
            self._age = 0
        return self._unit


class Spending:
    """Curvature work charged, and read in step times (``StepClock``).

    A λ_max slice is charged by what it did, its probe graph and HVPs ("units"), at the
    median seconds per unit over recent slices (the run's first slice, slowed by one-off
    set-up, left out), re-priced as the median moves: a slice slowed by something else
    (another process, the sender thread holding the GIL) costs what a slice costs, the
    same on a busy machine as on an idle one. Other work (the plan view, a failed probe,
    critical-sharpness searches) is charged the seconds it took.
    """

    def __init__(self, ticks: StepClock) -> None:
        self.ticks = ticks
        self.units = 0  # probe graphs + HVPs of the λ_max slices
        self.other = 0.0  # seconds of other work
        self.critical = 0.0  # seconds of critical-sharpness searches
        self.unit_costs: collections.deque[float] = collections.deque(maxlen=UNIT_WINDOW)
        self._lapped = 0.0  # ``seconds`` at the last lap

    def unit_cost(self) -> float:
        """Median seconds of one unit (0 before any)."""
        return statistics.median(self.unit_costs) if self.unit_costs else 0.0

    @property
    def seconds(self) -> float:
        """All curvature work, as charged."""
        return self.units * self.unit_cost() + self.other + self.critical

    def in_steps(self, seconds: float) -> float:
        """``seconds`` in units of the run's median step (inf before one is timed)."""
        unit = self.ticks.unit
        return seconds / unit if unit else math.inf

    def charge(self, seconds: float, units: int = 0, critical: bool = False) -> None:
        """Work of ``seconds``: a λ_max slice of ``units``, or other work."""
        if units:
            if self.units:  # the run's first slice is one-off set-up (LAPACK, autograd)
                self.unit_costs.append(seconds / units)
            self.units += units
        elif critical:
            self.critical += seconds
        else:
            self.other += seconds

    def lap(self) -> float:
        """Seconds charged since the last lap (what a lent clock advanced by)."""
        now = self.seconds
        out, self._lapped = now - self._lapped, now
        return out

    def per_unit(self) -> float:
        """Step times one unit costs (inf before a step is timed, 0 before a unit)."""
        return self.in_steps(self.unit_cost()) if self.unit_costs else 0.0


class PlanView:
    """The planned LR of the next PLAN_AHEAD steps, from a private snapshot of the job's
    schedule (``client/schedule.py``) stepped ahead here, on the training thread: the
    schedule must know a rise before it comes, whatever the sender thread is doing."""

    def __init__(self, source: PlanSource) -> None:
        self.source = source
        self.first = 0  # the step of lrs[0]
        self.lrs: list[float] = []
        self.ended = False  # the schedule raised past the view's end (the run ends there)
        self.broken = False

    def update(self, step: int, lr: float) -> bool:
        """Look ahead again when the view runs short or the LR left it; whether it did."""
        if self.broken:
            return False
        planned = self.at(step)
        end = self.first + len(self.lrs)
        short = not self.ended and step + PLAN_AHEAD // 2 >= end
        # An LR set by hand off the schedule's plan each step must not cost a snapshot
        # each step: the schedule is looked at again at most every REPLAN_GAP steps.
        moved = planned is not None and lr_moved(lr, planned) and step - self.first >= REPLAN_GAP
        if self.lrs and not short and not moved:
            return False
        try:
            lookahead = self.source.snapshot(step + 1)
            self.lrs = [lr, *lookahead.lrs(PLAN_AHEAD)]  # this step's LR, then the plan
        except Exception as exc:
            self.broken = True  # a schedule that cannot be copied will not copy next time
            log.warning("edgewatch: no LR plan for the curvature schedule: %r", exc)
            return False
        self.first, self.ended = step, lookahead.ended
        return True

    def at(self, step: int) -> float | None:
        i = step - self.first
        return self.lrs[i] if 0 <= i < len(self.lrs) else None

    def peak(self, first: int, last: int) -> float | None:
        """The highest planned LR in [first, last] (the view's last LR past its end)."""
        if not self.lrs:
            return None
        lo = max(first - self.first, 0)
        hi = min(last - self.first, len(self.lrs) - 1)
        return max(self.lrs[lo : hi + 1]) if lo <= hi else self.lrs[-1]


class Stir:
    """The loss or the gradient norm off its running mean (log scale) by STIR_Z running
    deviations: the run's state moves faster than a steady cadence would follow. Host
    floats only: a device value would need a sync."""

    def __init__(self) -> None:
        self.mean = [0.0, 0.0]
        self.var = [0.0, 0.0]
        self.count = [0, 0]

    def __call__(self, *values: object) -> bool:
        stirred = False
        for i, value in enumerate(values[:2]):
            if type(value) is not float or not value > 0 or not math.isfinite(value):
                continue
            y = math.log(value)
            if self.count[i] == 0:
                self.mean[i] = y
            deviation = y - self.mean[i]
            if self.count[i] >= STIR_WARM:
                wide = max(STIR_Z * math.sqrt(self.var[i]), STIR_FLOOR)
                stirred = stirred or abs(deviation) > wide
            self.count[i] += 1
            self.mean[i] += STIR_RATE * deviation
            self.var[i] = (1 - STIR_RATE) * (self.var[i] + STIR_RATE * deviation * deviation)
        return stirred
