"""What the curvature schedule (``client/curvature.py``) reads to decide: the run's own
step time, the planned LR of the coming steps, and whether the loss or gradient norm
stirs. Training thread only; each costs a few µs a step, and only when a probe is given.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import statistics
from collections.abc import Callable
from typing import Literal

from edgewatch.client.schedule import PlanSource
from edgewatch.monitor.plan import lr_moved

log = logging.getLogger("edgewatch.client")

STEP_WINDOW = 101  # recent step times the median is taken over
TIMED_STEPS = 3  # step times read before a price is (the first three are set-up's too)
RECENT_STEPS = 9  # step times a slice's price is read against (the load of the moment)
SLICE_STEPS = 1.0  # step times a slice may take, where HVPs are cheap (``slice_hvps``)
MAX_SLICE_HVPS = 8  # HVPs a slice may run at most
MEDIAN_EVERY = 16  # steps between recomputations of the median
PLAN_AHEAD = 1024  # steps of planned LR kept in view (~3 ms to step a torch scheduler)
REPLAN_GAP = 64  # steps between new views taken because the LR left the plan
STIR_Z = 4.0  # deviations (of the log) from the running mean that count as a stir
STIR_FLOOR = 0.1  # ... and at least this much in the log (10%): float noise is no stir
STIR_RATE = 0.05  # weight of the newest value in the running mean and variance
STIR_WARM = 20  # values before a stir can be seen
RISE = 1.5  # a planned LR this much above the one last vouched for wants an estimate


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
        of curvature work since the last tick, left out of the step (a lent clock,
        bench/instability/harness.py, advances by those seconds too)."""
        now = self.clock()
        if self.last is not None:
            self.times.append(max(now - self.last - work, 0.0))
            self._age += 1
        self.last = now

    @property
    def timed(self) -> bool:
        """Enough steps timed for curvature work to be priced in step times."""
        return len(self.times) >= TIMED_STEPS

    def recent(self) -> float | None:
        """The median of the last RECENT_STEPS step times (None before one)."""
        if not self.times:
            return None
        recent = list(itertools.islice(reversed(self.times), RECENT_STEPS))
        median = statistics.median(recent)
        return median if median > 0 else None

    @property
    def unit(self) -> float | None:
        """Seconds per training step (median), None until a step has been timed."""
        if self.times and (self._unit is None or self._age >= MEDIAN_EVERY):
            median = statistics.median(self.times)
            self._unit = median if median > 0 else None
            self._age = 0
        return self._unit


class Spending:
    """Curvature work charged, in the run's own step times (``StepClock``).

    λ_max slices are charged by what they did, their probe graphs and HVPs ("units"),
    all at the lowest price of a unit read so far, each price read against the training
    steps just before its slice (seconds per unit over the median of the last
    RECENT_STEPS steps). Both are timed under the same load, so a price read while the
    machine was busy is not applied, ten times off, after it has gone quiet. The lowest,
    because a timing's excess over it is something else's doing (another process, the
    daemon's or the sender's thread holding the GIL; Python's ``timeit`` documentation
    gives the same reason), and what was charged at a dearer price is charged again at
    the lower one: spending only falls after the fact, and a run whose first slices were
    all held up is not starved for the rest of it. The run's first slice, slowed by
    one-off set-up (LAPACK, autograd's first double backward), gives a price too: a
    dear one, soon undercut, but without it the first estimate's second slice would run
    unpriced and uncapped (a cold estimate of 7 HVPs took 3.2% of a 400-step run at
    2%, where an HVP costs about a training step). Other
    work (the plan view, a failed probe) and critical-sharpness searches are charged
    the seconds they took, in step times.
    """

    def __init__(self, ticks: StepClock) -> None:
        self.ticks = ticks
        self.units = 0  # probe graphs + HVPs of the λ_max slices
        self.other = 0.0  # step times of other work
        self.critical = 0.0  # step times of critical-sharpness searches
        self.early = 0.0  # seconds of other work before a step was timed
        self.lowest = math.inf  # the lowest price of a unit read so far, in step times
        self.seconds = 0.0  # all work, in seconds as it took
        self._lapped = 0.0  # ``seconds`` at the last lap

    def per_unit(self) -> float:
        """Step times one unit costs: the lowest read so far (0 before a price)."""
        return self.lowest if math.isfinite(self.lowest) else 0.0

    def in_steps(self, seconds: float) -> float:
        """``seconds`` in units of the run's median step (inf before one is timed)."""
        unit = self.ticks.unit
        return seconds / unit if unit else math.inf

    def spent(self) -> float:
        """Step times of all work charged (inf while work waits for a timed step)."""
        early = self.in_steps(self.early) if self.early else 0.0
        return self.sharpness() + self.other + self.critical + early

    def sharpness(self) -> float:
        """Step times of the λ_max slices, all at the lowest price read so far."""
        return self.units * self.per_unit()

    def charge(self, seconds: float, units: int = 0, critical: bool = False) -> None:
        """Work of ``seconds``: a λ_max slice of ``units``, or other work."""
        self.seconds += seconds
        step = self.ticks.recent() if self.ticks.timed else None
        if units:
            if step is not None:
                self.lowest = min(self.lowest, seconds / units / step)
            self.units += units
        elif step is None:
            self.early += seconds
        elif critical:
            self.critical += seconds / step
        else:
            self.other += seconds / step

    def slice_hvps(self, least: int) -> int:
        """HVPs of the next slice: as many as fit in SLICE_STEPS step times, between
        ``least`` (the ``hvps_per_step`` asked for) and MAX_SLICE_HVPS. Where an HVP is
        cheap beside a step (a small probe, a large batch), fewer slices mean fewer probe
        graphs and less drift of the parameters under one estimate, at a stall of about
        a step."""
        per_unit = self.per_unit()
        fit = int(SLICE_STEPS / per_unit) - 1 if per_unit > 0 else 0  # less the graph
        return max(least, min(fit, MAX_SLICE_HVPS))

    def lap(self) -> float:
        """Seconds of work since the last lap (left out of the step they fell in)."""
        out, self._lapped = self.seconds - self._lapped, self.seconds
        return out


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


class Rises:
    """Which planned LR rises the last λ_max estimate vouches for, and when another is
    wanted before one (``CurvatureSchedule``'s ``rise`` reason). Two estimates cover a
    sharp rise:

    - **ahead**: when the planned LR within ``lead`` steps (the horizon, the estimate's
      slices and some slack) exceeds ``RISE`` × the highest LR the last estimate was
      started for, so that a crossing the sharpness already shows is forecast a
      horizon ahead. Once the last estimate is older than the horizon, any rise at all
      wants one (the last stretch of a warmup gets one within the horizon of its peak).
    - **refresh**: sharpness grows while the LR holds (progressive sharpening: ×12
      between 125 and 50 steps before a ×30 jump of a heavy-ball CNN, README "Budget",
      ``tests/test_schedule_families.py``), so the estimate a
      horizon ahead of a ×30 jump can read far below what the network will carry into
      it. When a rise of more than ``RISE`` × the LR in force is within ``lead`` − half
      a horizon, and the last estimate is over half a horizon old, one more is taken:
      the warning then comes at least half a horizon ahead whatever the sharpening in
      between. Once per rise: the refresh does not ask for another.
    """

    def __init__(self, view: PlanView | None, horizon: int) -> None:
        self.view = view
        self.horizon = horizon
        self.vouched = 0.0  # the highest planned LR the last estimate was started for
        self.refresh_wanted = False  # the last estimate was started ahead of a sharp rise

    def peak(self, first: int, last: int) -> float | None:
        return self.view.peak(first, last) if self.view is not None else None

    def started(self, step: int, lr: float | None, lead: int, refresh: bool = False) -> None:
        """An estimate starts at ``step`` (LR in force ``lr``), for the ``lead`` steps on;
        ``refresh``: it is the refresh ``due`` asked for. Any other wants a refresh when a
        sharp rise is in view beyond half a horizon from here."""
        now = lr or 0.0
        peak = max(self.peak(step, step + lead) or 0.0, now)
        near = self.peak(step, step + lead - self.horizon // 2) or 0.0
        self.vouched = peak
        sharp_beyond = peak > RISE * now and not near > RISE * now
        self.refresh_wanted = sharp_beyond and not refresh

    def due(
        self, step: int, lr: float | None, lead: int, age: int, affordable: int
    ) -> Literal["ahead", "refresh"] | None:
        """Which estimate a rise wants at ``step``, if any. ``age``: steps since the last
        estimate finished; ``affordable``: estimates the allowance still covers. Where it
        covers one, a sharp rise gets the late one only, within half a horizon of it: the
        one that sees the sharpness the rise will meet."""
        now = lr or 0.0
        far = self.peak(step, step + lead)
        if far is None:
            return None
        half = self.horizon // 2
        near = self.peak(step, step + lead - half) or 0.0
        above = 1.01 if age >= self.horizon else RISE
        sharp = far > RISE * now
        if far > above * self.vouched and (affordable >= 2 or not sharp):
            return "ahead"
        if near > above * self.vouched:
            return "ahead"
        if self.refresh_wanted and age >= half and near > RISE * now:
            return "refresh"
        return None

    def pending(self, step: int) -> int:
        """Estimates still wanted by the rises in view: to hold back from the cadence."""
        ahead = self.peak(step, 1 << 62) or 0.0
        if ahead > RISE * self.vouched:
            return 2
        return 1 if self.refresh_wanted else 0
