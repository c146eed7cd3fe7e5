"""When will the planned LR outrun the curvature? The crossing forecast. Pure floats.

An optimizer is stable while the stability ratio r = λ·η / c stays under 1, with c = 2
for GD, 2 + 2β for heavy ball and 38 (β1 = 0.9) for Adam's preconditioned sharpness
(``thresholds.py``; Cohen et al. 2021, arXiv 2103.00065; 2022, arXiv 2207.14484). Two
facts shape the forecast:

1. Healthy training *sits* at the edge. Full-batch GD sharpens until r ≈ 1 and trains
   there for thousands of steps (Cohen et al. 2021, §3); minibatch Adam sits at ratios
   of its own, below or above 1. So the alarm is not r ≥ 1 but r ≥ ``margin`` × the
   larger of 1 and the *sustained level*: the median ratio of recent estimates taken
   while the job was healthy, the LR held, and (Adam) the optimizer state had settled.
   A damaged stretch or an excursion never teaches the level (bench/RESULTS.md: a
   level learnt from a blow-up raised the alarm to 147–1331 and let a broken job read
   ``stable``).
2. What breaks a job is the LR outrunning the curvature: a warmup too fast for the
   network to flatten, or a scheduled jump (Kalra & Barkeshli 2024, arXiv 2406.09405).
   Both are in the LR plan before they happen.

So the forecast takes the latest sharpness, grown along its recent log-linear trend
(the slope less two standard errors, capped), times the planned LR of each coming step,
and finds the first step whose ratio reaches the alarm ratio.

Adam-type optimizers sit at a level of their own from the start: the first teaching
estimate's ratio stands for the level until estimates have matured into one
(``provisional``). Of the benchmark's 34 event-free minibatch Adam runs at a held LR,
5 read a first settled ratio above 1, from 1.8 to 82 (bench/RESULTS.md, "Instability
benchmark v10"); against the bare max(1, level) each was a crossing "now", where
nothing followed. The earliest estimate of the horizon stands, not the latest: a job
sharpening at a held LR still crosses against it. SGD and heavy ball keep max(1, level):
their ratio cannot stay above 1 (Cohen et al. 2021), and a first estimate above it
says the plan is too hot.

Adam's first steps: its second-moment estimate starts as one squared gradient, so the
preconditioned ratio of the first estimates is 30–60× what the same run shows a hundred
steps later (bench/RESULTS.md). Estimates before ``settle_steps`` optimizer steps therefore do
not enter the forecast; a run that truly starts too hot shows it in its loss and
gradient norm instead (``precursors.py``).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import deque
from collections.abc import Callable, Sequence

from edgewatch.monitor.plan import LRPlan
from edgewatch.monitor.settings import PredictorSettings


@dataclasses.dataclass(frozen=True)
class Estimate:
    step: int
    value: float
    ratio: float
    """λ·η/c at the LR in force when it was taken."""
    teaches: bool
    """Whether it may enter the sustained level: taken while the job was healthy and its
    LR held (an estimate in a warmup says where the LR has pushed the job so far, not
    what it can bear)."""


@dataclasses.dataclass(frozen=True)
class Crossing:
    """The forecast made at one moment: every number the API and the reason text show."""

    made_at: int
    level: float
    """The sustained level the alarm ratio was set from (0: none yet)."""
    alarm_ratio: float
    at: int | None
    """First step whose forecast ratio reaches ``alarm_ratio`` (None: none within reach)."""
    low: int | None
    """... for a sharpness one scatter higher (sooner), and one lower (``high``, later)."""
    high: int | None
    worst: int
    """The crossing step, or else the riskiest step within the horizon."""
    worst_ratio: float
    worst_lr: float
    sharpness: float
    sharpness_step: int
    provisional: bool = False
    """The level is the first healthy estimate's own ratio, none having matured yet."""
    peak: int = 0
    """The riskiest step of the whole plan scanned (a jump beyond the horizon)."""
    peak_ratio: float = 0.0
    peak_lr: float = 0.0


class CurvatureForecast:
    """The estimates of one run, and the crossing forecast made from them."""

    def __init__(
        self,
        unit: float,
        *,
        margin: float,
        horizon: int,
        sustained_window: int,
        trend_window: int,
        max_growth: float,
        lookahead: int,
        total_steps: int | None,
        provisional: bool = False,
    ) -> None:
        self.unit = unit  # every threshold is a constant over η: ratio = λ·η / unit
        self.margin = margin
        self.horizon = horizon
        self.sustained_window = sustained_window
        self.trend_window = trend_window
        self.max_growth = max_growth
        self.lookahead = lookahead
        self.total_steps = total_steps
        self.provisional = provisional  # the first teaching estimate stands for the level
        self.estimates: deque[Estimate] = deque(maxlen=max(trend_window, 8))
        self._maturing: deque[Estimate] = deque()  # teaching estimates under a horizon old
        self.taught: deque[Estimate] = deque(maxlen=sustained_window)  # the level's sources
        self.last: Crossing | None = None
        self._slope = 0.0  # the growth rate of the last forecast

    @classmethod
    def from_settings(
        cls,
        unit: float,
        margin: float,
        s: PredictorSettings,
        total_steps: int | None,
        provisional: bool = False,
    ) -> CurvatureForecast:
        return cls(
            unit,
            margin=margin,
            horizon=s.horizon,
            sustained_window=s.sustained_window,
            trend_window=s.trend_window,
            max_growth=s.max_growth,
            lookahead=s.lookahead,
            total_steps=total_steps,
            provisional=provisional,
        )

    def ratio_at(self, step: int, lr: float) -> float:
        """The forecast ratio at ``step`` for ``lr``, along the last forecast's trend."""
        last = self.estimates[-1]
        growth = min(self._slope * max(0, step - last.step), math.log(self.max_growth))
        return last.value * math.exp(growth) * lr / self.unit

    def add(self, estimate: Estimate) -> None:
        self.estimates.append(estimate)
        if estimate.teaches:
            self._maturing.append(estimate)

    def sustain(self, now: int, lr: float) -> None:
        """The job has trained a horizon past the crossing forecast for it, its loss
        healthy: the forecast ratio at ``lr`` now is a level it has sustained."""
        last = self.estimates[-1]
        self.taught.append(Estimate(now, last.value, self.ratio_at(now, lr), teaches=True))

    def forget_maturing(self) -> None:
        """The job has just gone into an alarm state, or on from ``approaching`` into damage:
        the estimates of the horizon before it (the ones that saw it coming) describe the
        trouble, not what the job bears."""
        self._maturing.clear()

    def sustained_level(self, now: int) -> float:
        """Median ratio of the recent estimates the job has *sustained*: teaching ones at
        least a horizon old that no alarm followed within the horizon (a run diverging
        from its first steps has sustained nothing). Before any has matured, with
        ``provisional``: the ratio of the earliest teaching estimate under a horizon old."""
        while self._maturing and self._maturing[0].step <= now - self.horizon:
            self.taught.append(self._maturing.popleft())
        recent = [e.ratio for e in self.taught]
        if recent:
            return statistics.median(recent)
        return self._maturing[0].ratio if self.provisional and self._maturing else 0.0

    def forecast(self, now: int, lr_at: Callable[[int], float], plan: LRPlan | None) -> Crossing:
        """Find the crossing from ``now`` on, against the level sustained by ``now``."""
        last = self.estimates[-1]
        slope, scatter = self._trend()
        self._slope = slope
        level = self.sustained_level(now)
        limit = self.margin * max(1.0, level)
        cap = math.log(self.max_growth)

        def ratio(step: int, shift: float = 0.0) -> float:
            growth = min(slope * max(0, step - last.step), cap)
            return last.value * math.exp(growth + shift) * lr_at(step) / self.unit

        scan = self._scan(now, plan)

        def first_crossing(shift: float) -> int | None:
            return next((step for step in scan if ratio(step, shift) >= limit), None)

        at = first_crossing(0.0)
        # The riskiest step within the horizon stands for "where the LR goes next".
        worst = (
            at if at is not None else max((k for k in scan if k <= now + self.horizon), key=ratio)
        )
        peak = max(scan, key=ratio) if scan else worst
        self.last = Crossing(
            made_at=now,
            level=level,
            alarm_ratio=limit,
            at=at,
            low=first_crossing(+scatter),
            high=first_crossing(-scatter),
            worst=worst,
            worst_ratio=ratio(worst),
            worst_lr=lr_at(worst),
            sharpness=last.value,
            sharpness_step=last.step,
            provisional=level > 0 and not self.taught,
            peak=peak,
            peak_ratio=ratio(peak),
            peak_lr=lr_at(peak),
        )
        return self.last

    def _scan(self, now: int, plan: LRPlan | None) -> list[int]:
        """Steps to test: each step over twice the horizon, then every 10th, and the knots;
        up to ``lookahead`` steps on, and not past the run's last step."""
        end = now + self.lookahead
        if self.total_steps is not None:
            end = max(now, min(end, self.total_steps - 1))
        near = min(end, now + 2 * self.horizon)
        steps = set(range(now, near + 1))
        steps.update(range(near, end + 1, 10))
        if plan is not None:
            steps.update(plan.knots_between(now, end))
            steps.update(k - 1 for k in plan.knots_between(now + 1, end))
        return sorted(steps)

    def _trend(self) -> tuple[float, float]:
        """Growth rate of log-sharpness per step, and the scatter about the fit.

        The rate is the least-squares slope less two standard errors, floored at 0: noisy
        estimates at the edge fit a slope of either sign, and extrapolating one of those
        would raise alarms on a job that is only hovering there.
        """
        recent = list(self.estimates)[-self.trend_window :]
        if len(recent) < 3:
            return 0.0, 0.1
        xs = [e.step for e in recent]
        ys = [math.log(e.value) for e in recent]
        line = fit_line(xs, ys)
        if line is None:
            return 0.0, 0.1
        residuals = [y - line.at(x) for x, y in zip(xs, ys, strict=True)]
        spread = sum(r * r for r in residuals) / (len(recent) - 2)
        stderr = math.sqrt(spread / line.sxx)
        return max(0.0, line.slope - 2 * stderr), max(0.05, math.sqrt(spread))


@dataclasses.dataclass(frozen=True)
class Line:
    """A least-squares line: y = mean_y + slope · (x − mean_x)."""

    slope: float
    mean_x: float
    mean_y: float
    sxx: float
    """Σ (x − mean_x)², for the slope's standard error."""

    def at(self, x: float) -> float:
        return self.mean_y + self.slope * (x - self.mean_x)


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> Line | None:
    """The least-squares line through (xs, ys); None where the xs do not spread."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return Line(slope, mx, my, sxx)
