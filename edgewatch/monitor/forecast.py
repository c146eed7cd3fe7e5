"""Forecast of steps-to-instability for one job, from its records alone. Pure floats.

The science (DESIGN.md): an optimizer is stable while the stability ratio
r = λ / threshold(η) stays under 1, with threshold 2/η for GD and 38/η for Adam with
β1 = 0.9 on the preconditioned sharpness (Cohen et al. 2021, arXiv 2103.00065; 2022,
arXiv 2207.14484). Two facts shape the rule here:

1. Healthy training *sits* at the edge. Full-batch GD sharpens until r ≈ 1 and then
   trains there for thousands of steps (edge of stability, Cohen et al. 2021, §3);
   minibatch Adam sits at preconditioned ratios far above 1 without a spike. So "r ≥ 1"
   is no alarm for a job already there. Its *sustained level* is the median ratio of
   the estimates it has lived with; the alarm ratio is ``margin`` × the larger of 1 and
   that level (``margin`` > 1: networks catapult rather than diverge a little past the
   quadratic's limit).
2. What breaks a job is the LR outrunning the curvature: a warmup too fast for the
   network to flatten, or a scheduled jump (Kalra & Barkeshli 2024, arXiv 2406.09405).
   Both are in the LR plan before they happen.

So the forecast multiplies the latest sharpness, grown along its recent trend (capped),
by the *planned* LR of each coming step, and finds the first step whose ratio reaches
the alarm ratio. That step minus the current one is steps-to-instability,
with a range from the scatter of the recent estimates. The state:

- ``diverged``: a non-finite loss or gradient norm (at once, and for the rest of the run);
- ``unstable``: the crossing is now, or the loss is in an excursion (its short average
  ``loss_excursion`` × over its running minimum);
- ``approaching``: the crossing is within ``horizon`` steps;
- ``stable``: otherwise, after ``recover_steps`` quiet steps (so an alarm does not flap).

Between sharpness estimates nothing needs recomputing per step: the crossing is a step
number, fixed until a new estimate, a new plan or an LR off the plan arrives.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import deque
from collections.abc import Mapping
from typing import Any, Literal

from edgewatch.monitor.plan import LRPlan, lr_moved
from edgewatch.monitor.thresholds import threshold_for

State = Literal["stable", "approaching", "unstable", "diverged"]
STATES: tuple[State, ...] = ("stable", "approaching", "unstable", "diverged")
ALARM_STATES = frozenset({"approaching", "unstable", "diverged"})
NONFINITE_EVENTS = {"nonfinite_loss": "loss", "nonfinite_grad_norm": "gradient norm"}
RISING = 1.01  # an LR over 1% above its value RISING_WINDOW steps before is rising
RISING_WINDOW = 20


@dataclasses.dataclass(frozen=True)
class PredictorSettings:
    """The rule's knobs; the defaults are the ones tuned in bench/predict (RESULTS.md)."""

    horizon: int = 100
    """A crossing this many steps ahead or nearer makes the job ``approaching``."""
    margin: float = 2.5
    """For a job at or past the edge: the forecast ratio, over its sustained level, that
    counts as a crossing."""
    sustained_window: int = 5
    """Recent estimates whose median ratio is the sustained level."""
    trend_window: int = 4
    """Recent estimates the sharpness trend (log-linear in steps) is fitted to."""
    max_growth: float = 2.0
    """Cap on how much the extrapolated sharpness may grow."""
    loss_excursion: float = 1.6
    """Short loss average over its running minimum that means the job is unstable."""
    loss_smoothing: float = 0.3
    """Weight of the newest loss (and gradient norm) in the short average."""
    grad_excursion: float = math.inf
    """Short gradient-norm average over its long one (weight 0.02) from which the job is
    ``approaching``: the oscillation along the top eigenvector grows in the gradient
    before the loss shows it. Off (infinite) unless tuning finds it earns its place."""
    recover_steps: int = 20
    """Quiet steps before an alarm state goes back to stable."""
    safety: float = 0.8
    """The recommended LR keeps the forecast ratio under safety × max(1, sustained level)."""
    lookahead: int = 2_000
    """Steps of the plan searched for a crossing (every step over twice the horizon, then
    every 10th: what a forecast costs, about 1 ms, at each estimate)."""


DEFAULT_SETTINGS = PredictorSettings()


@dataclasses.dataclass(frozen=True)
class Alert:
    """One state change, as stored and served by ``/api/jobs/{job_id}/alerts``."""

    step: int
    state: State
    steps_to_instability: float
    """math.inf when no crossing is forecast."""
    steps_low: float
    steps_high: float
    ratio: float | None
    """The forecast stability ratio at the crossing (or the riskiest step of the horizon)."""
    recommended_lr: float | None
    recommended_warmup_steps: int
    reason: str


@dataclasses.dataclass
class _Estimate:
    step: int
    value: float
    ratio: float
    lr_rising: bool


class JobForecast:
    """Feed one job's records in sequence order; read ``state`` and the forecast.

    ``observe_*`` return an :class:`Alert` when the state changes, else None.
    """

    def __init__(
        self,
        optimizer: Mapping[str, Any],
        settings: PredictorSettings = DEFAULT_SETTINGS,
        total_steps: int | None = None,
    ) -> None:
        self.optimizer = dict(optimizer)
        self.settings = settings
        self.total_steps = total_steps  # the plan past the run's end is not looked at
        # Every threshold here is a constant over η, so ratio = λ·η / unit.
        self.unit = threshold_for(self.optimizer, 1.0)
        self.state: State = "stable"
        self.step = -1
        self.lr: float | None = None
        self.plan: LRPlan | None = None
        self.lr_scale = 1.0  # actual LR / planned LR, for LRs moved off the plan by hand
        self.lr_assumed: float | None = None  # without a plan: the LR the forecast assumed
        self.recent_lrs: deque[float] = deque(maxlen=RISING_WINDOW)
        self.estimates: deque[_Estimate] = deque(maxlen=max(settings.sustained_window, 8))
        self.loss_average: float | None = None
        self.loss_floor = math.inf
        self.grad_average: float | None = None
        self.grad_baseline: float | None = None
        self.quiet = 0  # consecutive steps with nothing alarming
        self.cross_at: int | None = None  # forecast step of the crossing
        self.cross_low: int | None = None
        self.cross_high: int | None = None
        self.cross_ratio: float | None = None
        self.recommended_lr: float | None = None
        self.recommended_warmup_steps = 0
        self.reason = "no sharpness yet"
        self.alerts: list[Alert] = []

    # -- inputs -----------------------------------------------------------------------

    def observe_plan(self, step: int, plan: LRPlan) -> Alert | None:
        self.plan = plan
        self.lr_scale = 1.0
        self._forecast(max(step, self.step))
        return self._judge(max(step, self.step))

    def observe_sharpness(self, step: int, value: float, lr: float | None) -> Alert | None:
        lr = lr if lr is not None else self.lr
        if lr is None or not (math.isfinite(value) and value > 0):
            return None
        rising = bool(self.recent_lrs) and lr > RISING * self.recent_lrs[0]
        self.estimates.append(_Estimate(step, value, value * lr / self.unit, rising))
        self._forecast(max(step, self.step))
        return self._judge(max(step, self.step))

    def observe_step(
        self, step: int, lr: float, loss: float | None, grad_norm: float | None
    ) -> Alert | None:
        """One optimizer step; steps at or before the last one seen are ignored (resends)."""
        if step <= self.step:
            return None
        self.step, self.lr = step, lr
        self.recent_lrs.append(lr)
        if self.state == "diverged":
            return None
        finite_loss = loss is None or math.isfinite(loss)
        if not finite_loss or (grad_norm is not None and not math.isfinite(grad_norm)):
            what = "loss" if not finite_loss else "gradient norm"
            return self._set("diverged", step, f"non-finite {what} at step {step}")
        if loss is not None:
            a = self.settings.loss_smoothing
            self.loss_average = (
                loss if self.loss_average is None else (a * loss + (1 - a) * self.loss_average)
            )
            self.loss_floor = min(self.loss_floor, self.loss_average)
        if grad_norm is not None and self.settings.grad_excursion < math.inf:
            a = self.settings.loss_smoothing
            if self.grad_average is None or self.grad_baseline is None:
                self.grad_average = self.grad_baseline = grad_norm
            else:
                self.grad_average = a * grad_norm + (1 - a) * self.grad_average
                self.grad_baseline = 0.02 * grad_norm + 0.98 * self.grad_baseline
        if self.plan is not None and self._off_plan(step, lr):
            self._forecast(step)
        elif self.plan is None and self.estimates and lr_moved(lr, self.lr_assumed):
            self._forecast(step)  # no plan: the forecast assumes the LR stays where it is
        return self._judge(step)

    def observe_event(self, step: int, kind: str) -> Alert | None:
        """``nonfinite_loss`` / ``nonfinite_grad_norm`` (the client sends one after such a
        step) mean diverged, as the step itself does."""
        if self.state == "diverged" or kind not in NONFINITE_EVENTS:
            return None
        return self._set("diverged", step, f"non-finite {NONFINITE_EVENTS[kind]} at step {step}")

    # -- outputs ----------------------------------------------------------------------

    @property
    def steps_to_instability(self) -> float:
        if self.state == "diverged":
            return 0.0
        if self.cross_at is None:
            return math.inf
        return float(max(0, self.cross_at - self.step))

    @property
    def sustained_level(self) -> float:
        """Median ratio of the recent estimates the job has *sustained*: taken while the LR
        held (an estimate during a warmup says where the LR has pushed the job so far, not
        what it can bear), at least a horizon ago, so that a run diverging from its first
        steps has sustained nothing yet."""
        settled = self.step - self.settings.horizon
        held = [e.ratio for e in self.estimates if not e.lr_rising and e.step <= settled]
        recent = held[-self.settings.sustained_window :]
        return statistics.median(recent) if recent else 0.0

    @property
    def alarm_ratio(self) -> float:
        """The forecast ratio that counts as a crossing: ``margin`` × the larger of 1 and the
        sustained level. ``margin`` is the headroom a network has over the quadratic's
        limit before the loss spikes (it catapults to a flatter region instead, Lewkowycz
        et al. 2020, arXiv 2003.02218); 1.0 makes the forecast exact on a quadratic."""
        return self.settings.margin * max(1.0, self.sustained_level)

    @property
    def grad_ratio(self) -> float:
        if self.grad_average is None or not self.grad_baseline:
            return 1.0
        return self.grad_average / self.grad_baseline

    @property
    def loss_ratio(self) -> float:
        if self.loss_average is None or not self.loss_floor > 0:
            return 1.0
        return self.loss_average / self.loss_floor

    # -- the forecast -----------------------------------------------------------------

    def _off_plan(self, step: int, lr: float) -> bool:
        assert self.plan is not None
        if not lr_moved(lr, self.plan.at(step) * self.lr_scale):
            return False
        base = self.plan.at(step)
        self.lr_scale = lr / base if base > 0 else 1.0
        return True

    def _lr_at(self, step: int) -> float:
        if self.plan is None:
            return self.lr if self.lr is not None else 0.0
        return self.plan.at(step) * self.lr_scale

    def _forecast(self, now: int) -> None:
        """Find the crossing step from ``now`` on; set the recommendation."""
        self.lr_assumed = self.lr
        if not self.estimates:
            return
        s = self.settings
        last = self.estimates[-1]
        slope, scatter = self._trend()
        limit = self.alarm_ratio
        cap = math.log(s.max_growth)

        def ratio(step: int, shift: float = 0.0) -> float:
            growth = min(slope * max(0, step - last.step), cap)
            return last.value * math.exp(growth + shift) * self._lr_at(step) / self.unit

        scan = self._scan(now)

        def first_crossing(shift: float) -> int | None:
            for step in scan:
                if ratio(step, shift) >= limit:
                    return step
            return None

        self.cross_at = first_crossing(0.0)
        self.cross_low = first_crossing(+scatter)
        self.cross_high = first_crossing(-scatter)
        # The recommendation looks at the riskiest step within the horizon (or the crossing).
        worst = max((k for k in scan if k <= now + s.horizon), key=ratio)
        if self.cross_at is not None:
            worst = self.cross_at
        self.cross_ratio = ratio(worst)
        self._recommend(now, scan[-1], worst, self.cross_ratio, limit)

    def _scan(self, now: int) -> list[int]:
        """Steps to test: each step over twice the horizon, then every 10th, and the knots;
        up to ``lookahead`` steps on, and not past the run's last step."""
        s = self.settings
        end = now + s.lookahead
        if self.total_steps is not None:
            end = max(now, min(end, self.total_steps - 1))
        near = min(end, now + 2 * s.horizon)
        steps = set(range(now, near + 1))
        steps.update(range(near, end + 1, 10))
        if self.plan is not None:
            steps.update(k for k in self.plan.knots_between(now, end))
            steps.update(k - 1 for k in self.plan.knots_between(now + 1, end))
        return sorted(steps)

    def _trend(self) -> tuple[float, float]:
        """Growth rate of log-sharpness per step, and the scatter about the fit.

        The rate is the least-squares slope less two standard errors, floored at 0: noisy
        estimates at the edge fit a slope of either sign, and extrapolating one of those
        would raise alarms on a job that is only hovering there.
        """
        recent = list(self.estimates)[-self.settings.trend_window :]
        if len(recent) < 3:
            return 0.0, 0.1
        xs = [e.step for e in recent]
        ys = [math.log(e.value) for e in recent]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx == 0:
            return 0.0, 0.1
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        residuals = [y - (my + slope * (x - mx)) for x, y in zip(xs, ys, strict=True)]
        spread = sum(r * r for r in residuals) / (len(recent) - 2)
        stderr = math.sqrt(spread / sxx)
        return max(0.0, slope - 2 * stderr), max(0.05, math.sqrt(spread))

    def _recommend(self, now: int, end: int, worst: int, worst_ratio: float, limit: float) -> None:
        """The largest LR keeping the forecast ratio under safety × max(1, sustained level), and,
        when the plan raises the LR, a warmup long enough to get there at that pace."""
        s = self.settings
        # What the job has shown it bears, not the alarm's catapult headroom: a capped LR
        # must be one that trains, not one that is merely predicted to spike less.
        target = s.safety * max(1.0, self.sustained_level)
        lr_worst = self._lr_at(worst)
        self.recommended_lr = lr_worst * target / worst_ratio if worst_ratio > 0 else None
        self.recommended_warmup_steps = 0
        lr_now = self._lr_at(now)
        if self.plan is not None and worst_ratio >= limit and lr_worst > lr_now > 0:
            peak_step, _ = self.plan.peak_after(now, end - now)
            # Raise the LR as much more slowly as the forecast overshoots the target.
            planned = max(1, peak_step - now)
            self.recommended_warmup_steps = math.ceil(planned * worst_ratio / target)
        self.reason = self._explain(now, worst, worst_ratio, limit)

    def _explain(self, now: int, worst: int, worst_ratio: float, limit: float) -> str:
        last = self.estimates[-1]
        level = self.sustained_level
        sustained = f"sustained level {level:.2f}" if level else "no sustained level yet"
        words = (
            f"sharpness {last.value:.4g} (step {last.step}) at the LR "
            f"{'planned' if self.plan else 'in force'} for step {worst} "
            f"({self._lr_at(worst):.3g}) gives ratio {worst_ratio:.2f}; "
            f"{sustained}, alarm at {limit:.2f}"
        )
        if self.recommended_lr is not None and worst_ratio >= limit:
            words += f"; keep the LR at or below {self.recommended_lr:.3g}"
            if self.recommended_warmup_steps:
                words += f", or warm up over {self.recommended_warmup_steps} steps from here"
        return words

    # -- the state machine ------------------------------------------------------------

    def _judge(self, step: int) -> Alert | None:
        if self.state == "diverged":
            return None
        s = self.settings
        to_go = None if self.cross_at is None else self.cross_at - step
        wanted: State = "stable"
        if (to_go is not None and to_go <= 0) or self.loss_ratio >= s.loss_excursion:
            wanted = "unstable"
        elif (to_go is not None and to_go <= s.horizon) or self.grad_ratio >= s.grad_excursion:
            wanted = "approaching"
        if wanted == "unstable" and self.loss_ratio >= s.loss_excursion:
            why = f"loss at {self.loss_ratio:.2f}× its running minimum"
            if to_go is not None and to_go <= 0:
                why += "; " + self.reason
        elif wanted == "approaching" and self.grad_ratio >= s.grad_excursion:
            why = f"gradient norm at {self.grad_ratio:.2f}× its long average"
        else:
            why = self.reason
        if wanted == "stable":
            self.quiet += 1
            if self.state == "stable" or self.quiet < s.recover_steps:
                return None
            return self._set("stable", step, self.reason)
        self.quiet = 0
        if STATES.index(wanted) > STATES.index(self.state) or (
            self.state == "unstable" and wanted == "approaching"
        ):
            return self._set(wanted, step, why)
        return None

    def _set(self, state: State, step: int, reason: str) -> Alert:
        self.state = state
        self.quiet = 0
        # A sharper curvature (cross_low) crosses sooner than a flatter one (cross_high).
        low = math.inf if self.cross_low is None else max(0, self.cross_low - step)
        high = math.inf if self.cross_high is None else max(0, self.cross_high - step)
        if state == "diverged" and self.recommended_lr is None and self.lr:
            self.recommended_lr = self.lr / 2  # nothing better known without sharpness
        alert = Alert(
            step=step,
            state=state,
            steps_to_instability=self.steps_to_instability,
            steps_low=float(low),
            steps_high=float(high),
            ratio=self.cross_ratio,
            recommended_lr=self.recommended_lr,
            recommended_warmup_steps=self.recommended_warmup_steps,
            reason=reason,
        )
        self.alerts.append(alert)
        return alert
