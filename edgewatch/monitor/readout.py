"""What a job's forecast says now, read off its state: the numbers ``/api/jobs`` and the
gauges serve, and the reason in words. Pure floats; ``JobForecast`` is one."""

from __future__ import annotations

import math

from edgewatch.monitor.crossing import Crossing, CurvatureForecast, Estimate
from edgewatch.monitor.ladder import ALARM_STATES
from edgewatch.monitor.plan import LRPlan
from edgewatch.monitor.precursors import LossHealth
from edgewatch.monitor.recommend import Advice, explain
from edgewatch.monitor.settings import PredictorSettings, State


class Readout:
    """The outputs of a forecast, from the fields ``JobForecast`` keeps."""

    settings: PredictorSettings
    curvature: CurvatureForecast
    loss: LossHealth
    state: State
    step: int
    plan: LRPlan | None
    advice: Advice
    streams: dict[str, CurvatureForecast]

    @property
    def crossing(self) -> Crossing | None:
        return self.curvature.last

    @property
    def estimates(self) -> list[Estimate]:
        """The recent estimates that entered the forecast."""
        return list(self.curvature.estimates)

    @property
    def steps_to_instability(self) -> float:
        if self.state == "diverged":
            return 0.0
        crossing = self.crossing
        if crossing is None or crossing.at is None:
            return math.inf
        return float(max(0, crossing.at - self.step))

    @property
    def sustained_level(self) -> float | None:
        """The level the current forecast's alarm ratio was set from (None: none yet)."""
        crossing = self.crossing
        return crossing.level if crossing is not None and crossing.level > 0 else None

    @property
    def alarm_ratio(self) -> float:
        """The forecast ratio that counts as a crossing now: ``margin`` × max(1, level).
        ``margin`` is the headroom a network has over the quadratic's limit before the
        loss spikes (it catapults instead, Lewkowycz et al. 2020, arXiv 2003.02218)."""
        crossing = self.crossing
        return crossing.alarm_ratio if crossing is not None else self.settings.margin

    @property
    def recommended_lr(self) -> float | None:
        return self.advice.current.lr

    @property
    def recommended_warmup_steps(self) -> int:
        return self.advice.current.warmup_steps

    @property
    def resume_step(self) -> int | None:
        return self.advice.current.resume_step

    @property
    def loss_ratio(self) -> float:
        return self.loss.ratio

    @property
    def reason(self) -> str:
        """The current forecast in words, rendered from the numbers the API serves."""
        alarmed = self.state in ALARM_STATES
        return explain(
            self.crossing, self.advice.current, planned=self.plan is not None, alarmed=alarmed
        )

    def steps_between(self, step: int) -> tuple[float, float]:
        """Steps from ``step`` to the crossing of the sharper curvature of the forecast's
        band (low: it crosses sooner) and of the flatter one (high); inf: none."""
        crossing = self.crossing
        low = math.inf if crossing is None or crossing.low is None else max(0, crossing.low - step)
        high = (
            math.inf if crossing is None or crossing.high is None else max(0, crossing.high - step)
        )
        return float(low), float(high)

    def _soonest_crossing(self) -> tuple[int, str] | None:
        crossings = [
            (stream.last.at, name)
            for name, stream in self.streams.items()
            if stream.last is not None and stream.last.at is not None
        ]
        return min(crossings) if crossings else None
