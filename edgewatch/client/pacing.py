"""What the curvature schedule (``client/curvature.py``) reads to decide: the run's own
step time, the work charged against it, and whether the loss or gradient norm stirs
(the planned LR of the coming steps is ``client/rises.py``'s). Training thread only;
each costs a few µs a step, and only when a probe is given.
"""

from __future__ import annotations

import collections
import itertools
import math
import statistics
import time
from collections.abc import Callable, Mapping

from edgewatch.monitor.progress import UNIT_KINDS

STEP_WINDOW = 101  # recent step times the median is taken over
TIMED_STEPS = 3  # step times read before a price is (the first three are set-up's too)
RECENT_STEPS = 9  # step times a slice's price is read against (the load of the moment)
SLICE_STEPS = 1.0  # step times a slice may take, where HVPs are cheap (``slice_hvps``)
MAX_SLICE_HVPS = 8  # HVPs a slice may run at most
MEDIAN_EVERY = 16  # steps between recomputations of the median
STIR_Z = 4.0  # deviations (of the log) from the running mean that count as a stir
STIR_FLOOR = 0.1  # ... and at least this much in the log (10%): float noise is no stir
STIR_RATE = 0.05  # weight of the newest value in the running mean and variance
STIR_WARM = 20  # values before a stir can be seen


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
    2%, where an HVP costs about a training step). Other work (the plan view, a failed
    probe) and critical-sharpness searches are charged the seconds they took, in step
    times.

    Units come in two kinds (``monitor/progress.py``), each with its own price: "exact"
    (the probe graph and its double-backward products) and "difference" (plain
    gradients, up to half the price). The slice that compares the two has both kinds: it
    is charged at the prices known and reads neither.
    """

    def __init__(self, ticks: StepClock) -> None:
        self.ticks = ticks
        self.units = dict.fromkeys(UNIT_KINDS, 0)  # probe evaluations of the λ_max slices
        self.other = 0.0  # step times of other work
        self.critical = 0.0  # step times of critical-sharpness searches
        self.early = 0.0  # seconds of other work before a step was timed
        self.lowest = dict.fromkeys(UNIT_KINDS, math.inf)  # per kind, in step times
        self.seconds = 0.0  # all work, in seconds as it took
        self._lapped = 0.0  # ``seconds`` at the last lap

    def per_unit(self, kind: str = "exact") -> float:
        """Step times one unit of ``kind`` costs: the lowest read so far; before one, the
        other kind's (a difference unit is the cheaper: never under-charged so); else 0."""
        for price in (self.lowest[kind], *self.lowest.values()):
            if math.isfinite(price):
                return price
        return 0.0

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
        return sum(count * self.per_unit(kind) for kind, count in self.units.items())

    def charge(
        self, seconds: float, units: Mapping[str, int] | None = None, critical: bool = False
    ) -> None:
        """Work of ``seconds``: a λ_max slice of ``units`` (count per kind), or other work."""
        self.seconds += seconds
        step = self.ticks.recent() if self.ticks.timed else None
        counted = {kind: n for kind, n in (units or {}).items() if n}
        if counted:
            if step is not None and len(counted) == 1:
                [(kind, n)] = counted.items()
                self.undercut(kind, seconds / n)
            for kind, n in counted.items():
                self.units[kind] += n
        elif step is None:
            self.early += seconds
        elif critical:
            self.critical += seconds / step
        else:
            self.other += seconds / step

    def undercut(self, kind: str, seconds: float) -> None:
        """A unit of ``kind`` was seen to take ``seconds`` (a slice's mean, or its cheapest
        HVP, ``HvpLaps``): the price is that, if lower."""
        step = self.ticks.recent() if self.ticks.timed else None
        if step is not None:
            self.lowest[kind] = min(self.lowest[kind], seconds / step)

    def slice_hvps(self, least: int, kind: str = "exact") -> int:
        """HVPs of the next slice: as many as fit in SLICE_STEPS step times, between
        ``least`` (the ``hvps_per_step`` asked for) and MAX_SLICE_HVPS. Where an HVP is
        cheap beside a step (a small probe, a large batch), fewer slices mean fewer probe
        graphs and less drift of the parameters under one estimate, at a stall of about
        a step."""
        per_unit = self.per_unit(kind)
        fit = int(SLICE_STEPS / per_unit) - 1 if per_unit > 0 else 0  # less the graph
        return max(least, min(fit, MAX_SLICE_HVPS))

    def lap(self) -> float:
        """Seconds of work since the last lap (left out of the step they fell in)."""
        out, self._lapped = self.seconds - self._lapped, self.seconds
        return out


class HvpLaps:
    """The seconds of each HVP of a slice, from the second on: the first also builds the
    probe graph and, in a run's first slice, pays one-off set-up (LAPACK, autograd's first
    double backward), so a first slice's mean price is dear; its cheapest HVP is not."""

    def __init__(self, start: float) -> None:
        self.marks = [start]
        self.cheapest: float | None = None

    def lap(self) -> float | None:
        """An HVP ended now: the cheapest lap so far (None after the first)."""
        self.marks.append(time.perf_counter())
        if len(self.marks) >= 3:
            last = self.marks[-1] - self.marks[-2]
            self.cheapest = last if self.cheapest is None else min(self.cheapest, last)
        return self.cheapest


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
