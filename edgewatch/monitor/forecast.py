"""The state of one job, and its alerts, from its records alone. Pure floats.

Three kinds of evidence (the science of each is in its module):

- the crossing forecast (``crossing.py``): the latest sharpness, along its trend, times
  the planned LR, against ``margin`` × the level the job has sustained;
- the loss's health and the per-step precursors (``precursors.py``): the loss over its
  running minimum; the gradient norm, the update norm and Adam's moment ratio over their
  own baselines;
- non-finite values: diverged, at once and for good.

The state ladder and its hysteresis are in ``ladder.py``. An estimate of the horizon
before an alarm never teaches the sustained level, and the LR in force when a job went
unstable caps every later recommendation (``recommend.py``).

Per step the work is O(1): a few exponential averages and comparisons, and a block of
steps is advanced in arrays where nothing but the averages moves (``window.py``). The
crossing is a step number, recomputed only when a sharpness estimate, a plan or an LR
off the plan arrives.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from edgewatch.monitor.crossing import CurvatureForecast, Estimate
from edgewatch.monitor.ladder import ALARM_STATES, DAMAGED_STATES, RANK, STATES, climb
from edgewatch.monitor.plan import LRPlan, lr_moved
from edgewatch.monitor.precursors import Excursion, LossHealth, per_lr
from edgewatch.monitor.readout import Readout
from edgewatch.monitor.recommend import Advice, Recommendation, recommend
from edgewatch.monitor.settings import DEFAULT_SETTINGS, Alert, PredictorSettings, State
from edgewatch.monitor.thresholds import threshold_for, uses_preconditioned_sharpness

if TYPE_CHECKING:  # window.py imports NumPy and SciPy: loaded by the block path's first use
    from edgewatch.monitor.window import StepLike

# The settings and Alert live in settings.py; importers of this module keep them.
__all__ = ["ALARM_STATES", "DEFAULT_SETTINGS", "STATES", "Alert", "JobForecast",
           "PredictorSettings", "State", "per_lr"]  # fmt: skip
NONFINITE_EVENTS = {"nonfinite_loss": "loss", "nonfinite_grad_norm": "gradient norm"}
RISING = 1.01  # an LR over 1% above its value RISING_WINDOW steps before is rising
RISING_WINDOW = 20


class JobForecast(Readout):
    """Feed one job's records in sequence order; read ``state`` and the forecast.

    ``observe_*`` return an :class:`Alert` when the state changes, else None.
    """

    def __init__(
        self,
        optimizer: Mapping[str, Any],
        settings: PredictorSettings = DEFAULT_SETTINGS,
        total_steps: int | None = None,
    ) -> None:
        s = self.settings = settings
        self.optimizer = dict(optimizer)
        self.total_steps = total_steps  # the plan past the run's end is not looked at
        self.adam = uses_preconditioned_sharpness(str(self.optimizer.get("kind", "")))

        def stream(unit: float, margin: float, own: bool = False) -> CurvatureForecast:
            return CurvatureForecast.from_settings(unit, margin, s, total_steps, own)

        unit = threshold_for(self.optimizer, 1.0)
        own = self.adam and bool(s.provisional_level)  # Adam's level of its own (crossing.py)
        self.curvature = stream(unit, s.margin, own)  # λ_max: the forecast the API shows
        # The two directional streams, each against its own sustained level: the
        # curvature along the update (same threshold as λ_max), the critical sharpness
        # (2/η: the step along the update that raises the loss).
        self.streams = {
            "sharpness": self.curvature,
            "curvature along the update": stream(unit, s.direction_margin, own),
            "critical sharpness": stream(2.0, s.critical_margin),
        }
        self.loss = LossHealth.from_settings(s)
        self.precursors = {
            "gradient norm": Excursion.from_settings(s.grad_excursion, s),
            "update norm": Excursion.from_settings(s.update_excursion, s),
            "moment ratio": Excursion.from_settings(s.moment_excursion, s),
        }
        # Only the precursors switched on are followed (the others cost nothing per step).
        self.grad_precursor, self.update_precursor, self.moment_precursor = (
            p if math.isfinite(p.threshold) else None for p in self.precursors.values()
        )
        self.nearest: tuple[int, str] | None = None  # the soonest crossing of any stream
        self.state: State = "stable"
        self.step = -1
        self.lr: float | None = None
        self.plan: LRPlan | None = None
        self.lr_scale = 1.0  # actual LR / planned LR, for LRs moved off the plan by hand
        self.lr_assumed: float | None = None  # without a plan: the LR the forecast assumed
        self.recent_lrs: deque[float] = deque(maxlen=RISING_WINDOW)
        self.failed_lr: float | None = None  # the lowest LR in force when the job broke
        self.quiet = 0  # consecutive steps with nothing alarming
        self.recommendation = Recommendation(None)  # from the latest forecast
        self.advice = Advice()  # what the job shows: changes only with an alert
        self.onset: int | None = None  # the first unstable step of the current episode
        self.alerts: list[Alert] = []

    # -- inputs -----------------------------------------------------------------------

    def observe_plan(self, step: int, plan: LRPlan) -> Alert | None:
        self.plan = plan
        self.lr_scale = 1.0
        now = max(step, self.step)
        self._forecast(now)
        return self._judge(now)

    def observe_sharpness(
        self, step: int, value: float, lr: float | None, along_update: float | None = None
    ) -> Alert | None:
        """A λ_max estimate, and the curvature along the last update measured with it."""
        if along_update is not None:
            self._add("curvature along the update", step, along_update, lr)
        return self._add("sharpness", step, value, lr)

    def observe_critical(self, step: int, value: float, lr: float | None) -> Alert | None:
        """A critical sharpness λ_c = 2/η_c along the last update."""
        return self._add("critical sharpness", step, value, lr)

    def _add(self, name: str, step: int, value: float, lr: float | None) -> Alert | None:
        lr = lr if lr is not None else self.lr
        stream = self.streams[name]
        if lr is None or not (math.isfinite(value) and value > 0) or stream.margin == math.inf:
            return None
        if self.adam and step < self.settings.settle_steps:
            return None  # Adam's second moment has not settled (crossing.py)
        rising = bool(self.recent_lrs) and lr > RISING * self.recent_lrs[0]
        # ``approaching`` is a crossing ahead, not trouble: the job bears what it is read at.
        healthy = self.state not in DAMAGED_STATES and not self.loss.over(self.settings.damage)
        ratio = value * lr / stream.unit
        stream.add(Estimate(step, value, ratio, teaches=healthy and not rising))
        now = max(step, self.step)
        stream.forecast(now, self._lr_at, self.plan)
        self.nearest = self._soonest_crossing()
        if stream is self.curvature:
            self._recommend(now)
        return self._judge(now)

    def observe_step(
        self,
        step: int,
        lr: float,
        loss: float | None,
        grad_norm: float | None,
        update_norm: float | None = None,
        moment_ratio: float | None = None,
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
            self.loss.update(loss)
        if self.grad_precursor is not None:
            self.grad_precursor.update(grad_norm)
        if self.update_precursor is not None:
            self.update_precursor.update(per_lr(update_norm, lr))
        if self.moment_precursor is not None:
            self.moment_precursor.update(moment_ratio)
        if self.plan is not None and self._off_plan(step, lr):
            self._forecast(step)
        elif self.plan is None and lr_moved(lr, self.lr_assumed):
            self._forecast(step)  # no plan: the forecast assumes the LR stays where it is
        return self._judge(step)

    def observe_steps(self, records: Sequence[StepLike]) -> list[Alert]:
        """Many steps in sequence order: the alerts ``observe_step`` would raise one by one,
        O(1) per record: a window that doubles while it is all quiet, MIN_BLOCK after a step
        that was not, and up to MAX_BACKOFF scalar steps between tries that find none."""
        import numpy as np

        from edgewatch.monitor.window import MAX_BACKOFF, MIN_BLOCK

        alerts: list[Alert] = []
        i, n = 0, len(records)
        window, backoff, wait = MIN_BLOCK, 0, 0
        while i < n:
            if wait == 0 and n - i >= MIN_BLOCK:
                with np.errstate(all="ignore"):  # overflow to inf is data, as in floats
                    quiet = self._advance_quietly(records[i : i + window])
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
                alert = self.observe_step(
                    r.step, r.lr, r.loss, r.grad_norm, r.update_norm, r.moment_ratio
                )
                if alert is not None:
                    alerts.append(alert)
                i += 1
        return alerts

    def _advance_quietly(self, block: Sequence[StepLike]) -> int:
        """Advance over the longest run of ``block`` in which nothing but the averages
        moves: each average scans the block, the first step that is not quiet is found,
        the averages commit the steps before it. Returns how many (0: none)."""
        import numpy as np

        from edgewatch.monitor.window import columns, off_plan, quiet_counts

        if self.state == "diverged" or self.loss.seen == 0:
            return 0
        cols = columns(block, self.step)
        if cols is None:
            return 0  # unusual clients: one at a time
        steps, lrs, losses, grads, ok = cols
        s = self.settings
        health = self.loss.scan(losses)
        ok &= self.loss.calm(health)
        damaged = self.loss.over_in(health, s.damage)
        if self.nearest is not None:
            ok &= self.nearest[0] - steps > s.horizon
        ok &= ~off_plan(self.plan, self.lr_scale, self.lr_assumed, steps, lrs)
        scans = []
        for excursion, values in (
            (self.grad_precursor, grads),
            (self.update_precursor, [per_lr(r.update_norm, r.lr) for r in block]),
            (self.moment_precursor, [r.moment_ratio for r in block]),
        ):
            if excursion is not None:
                scan = excursion.scan(values)
                if scan is None:
                    return 0
                ok &= scan.fine
                scans.append((excursion, scan))
        quiet = quiet_counts(self.state == "unstable", self.quiet, damaged)
        ok &= quiet < s.recover_steps if self.state != "stable" else True
        m = len(block) if ok.all() else int(np.argmin(ok))  # the first step not quiet
        if m == 0:
            return 0
        self.step, self.lr = int(steps[m - 1]), float(lrs[m - 1])
        self.recent_lrs.extend(lrs[max(0, m - (self.recent_lrs.maxlen or m)) : m].tolist())
        self.loss.commit(health, m)
        for excursion, scan in scans:
            excursion.commit(scan, m)
        self.quiet = int(quiet[m - 1])
        return m

    def observe_event(self, step: int, kind: str) -> Alert | None:
        """``nonfinite_loss`` / ``nonfinite_grad_norm`` (the client sends one after such a
        step) mean diverged, as the step itself does."""
        if self.state == "diverged" or kind not in NONFINITE_EVENTS:
            return None
        return self._set("diverged", step, f"non-finite {NONFINITE_EVENTS[kind]} at step {step}")

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
        """Every stream's crossing again (a new plan, or an LR off the plan)."""
        self.lr_assumed = self.lr
        for stream in self.streams.values():
            if stream.estimates:
                stream.forecast(now, self._lr_at, self.plan)
        self.nearest = self._soonest_crossing()
        if self.curvature.estimates:
            self._recommend(now)

    def _recommend(self, now: int) -> None:
        s = self.settings
        self.recommendation = recommend(
            self.crossing,
            now=now,
            lr_now=self._lr_at(now) if self.lr is not None or self.plan else None,
            plan=self.plan,
            total_steps=self.total_steps,
            failed_lr=self.failed_lr,
            alarmed=self.state in ALARM_STATES,
            safety=s.safety,
            backoff=s.backoff,
        )

    # -- the state machine ------------------------------------------------------------

    def _wanted(self, step: int) -> tuple[State, str]:
        """The state the evidence asks for now, and why."""
        s = self.settings
        if self.loss.spiking:
            return "unstable", f"loss at {self.loss.ratio:.2f}× its running minimum"
        if self.nearest is not None and self.nearest[0] <= step:
            self._recheck_passed(step)
        if self.nearest is not None:
            at, name = self.nearest
            if at <= step:
                return "unstable", f"the {name} forecast crosses now"
            if at - step <= s.horizon:
                return "approaching", f"the {name} forecast crosses in {at - step} steps"
        for precursor, name in (
            (self.grad_precursor, "gradient norm"),
            (self.update_precursor, "update norm"),
            (self.moment_precursor, "moment ratio"),
        ):
            if precursor is not None and precursor.alarming:
                return "approaching", f"{name} at {precursor.ratio:.2f}× its baseline"
        return "stable", ""

    def _recheck_passed(self, step: int) -> None:
        """A crossing forecast for a step now past holds only while the ratio at the LR in
        force is still over the alarm, and until the job has outlived it: when the plan
        has brought the LR down (a decay after a jump), or the job has trained on a
        horizon past it with a healthy loss, the forecast is made again from here, so a
        recovered job can return to stable. An O(1) test per step."""
        lr, healthy = self._lr_at(step), not self.loss.over(self.settings.damage)
        for stream in self.streams.values():
            last = stream.last
            if last is None or last.at is None or last.at > step or last.made_at >= step:
                continue
            # A horizon past it with a healthy loss, the job has outlived the crossing: what
            # it trains at now is what it bears (a network flattens after a jump it survives).
            outlived = healthy and not self.loss.spiking and step - last.at >= self.settings.horizon
            if outlived:
                stream.sustain(step, lr)
            if outlived or stream.ratio_at(step, lr) < last.alarm_ratio:
                stream.forecast(step, self._lr_at, self.plan)
                if stream is self.curvature:
                    self._recommend(step)
        self.nearest = self._soonest_crossing()

    def _judge(self, step: int) -> Alert | None:
        if self.state == "diverged":
            return None
        wanted, why = self._wanted(step)
        damaged = self.state == "unstable" and self.loss.over(self.settings.damage)
        move, self.quiet = climb(
            self.state, wanted, damaged, self.quiet, self.settings.recover_steps
        )
        if move is None:
            return None
        return self._set(move, step, why if move != "stable" else "quiet again")

    def _set(self, state: State, step: int, why: str) -> Alert:
        if RANK[state] > RANK[self.state]:  # into an alarm, or on from approaching to damage
            self.curvature.forget_maturing()
        self.state = state
        self.quiet = 0
        if state in DAMAGED_STATES and self.lr:
            self.failed_lr = self.lr if self.failed_lr is None else min(self.failed_lr, self.lr)
        if state in DAMAGED_STATES:
            self.onset = step if self.onset is None else self.onset
        elif state == "stable":
            self.onset = None
        self._recommend(max(step, self.step))
        crossing = self.crossing
        advice = self.advice.publish(
            self.recommendation,
            state=state,
            step=step,
            lr_in_force=self.lr,
            planned_lr=crossing.worst_lr if crossing is not None else None,
            resume_step=None if self.onset is None else max(0, self.onset - 1),
        )
        low, high = self.steps_between(step)
        alert = Alert(
            step=step,
            state=state,
            steps_to_instability=self.steps_to_instability,
            steps_low=low,
            steps_high=high,
            ratio=crossing.worst_ratio if crossing is not None else None,
            recommended_lr=advice.lr,
            recommended_warmup_steps=advice.warmup_steps,
            reason=f"{why}: {self.reason}" if why else self.reason,
            resume_step=advice.resume_step,
        )
        self.alerts.append(alert)
        return alert
