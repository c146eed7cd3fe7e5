"""What to change, and the words for it. Pure floats.

The recommended LR is the largest one that keeps the forecast ratio under ``safety`` ×
the larger of 1 and the sustained level: what the job has shown it bears, not the
alarm's catapult headroom, since a capped LR must be one that trains. It never reaches
an LR the job has already failed at (on the instability benchmark, recommendations
above the LRs that had broken the job were seen). Without a sharpness estimate to go
by, it is ``backoff`` × the LR in force.

How to apply it: hold the LR at or under the recommendation until the sharpness allows
the planned LR again (the forecast at the planned LR back under the alarm ratio), then
resume the plan. The edge-of-stability dynamics say why that can be enough: an LR under
2/λ lets the sharpness fall back (self-stabilisation, Damian et al. 2022, arXiv
2209.15594); when it does not come down, the plan's LR is too high for good and the cap
is the fix. Capping the LR for the rest of the run also prevents the spike but trains slower
(bench/RESULTS.md, intervention track). When the plan is what raises the LR (a warmup),
the other way is a longer warmup: the planned rise stretched by the forecast's overshoot,
never longer than half of what is left of the run.
"""

from __future__ import annotations

import dataclasses
import math

from edgewatch.monitor.crossing import Crossing
from edgewatch.monitor.plan import LRPlan


@dataclasses.dataclass(frozen=True)
class Recommendation:
    lr: float | None
    warmup_steps: int = 0
    resume_step: int | None = None
    """A diverged job: the last step it was healthy at; resume from a checkpoint at or
    before it."""
    note: str = ""
    """Why it is what it is, where that is not the forecast's numbers alone."""


def recommend(
    crossing: Crossing | None,
    *,
    now: int,
    lr_now: float | None,
    plan: LRPlan | None,
    total_steps: int | None,
    failed_lr: float | None,
    alarmed: bool,
    safety: float,
    backoff: float,
) -> Recommendation:
    lr: float | None = None
    warmup = 0
    if crossing is not None and crossing.worst_ratio > 0:
        target = safety * max(1.0, crossing.level)
        lr = crossing.worst_lr * target / crossing.worst_ratio
        rising = lr_now is not None and crossing.worst_lr > lr_now > 0
        if plan is not None and crossing.at is not None and rising:
            end = total_steps - 1 if total_steps is not None else plan.end
            peak_step, _ = plan.peak_after(now, max(1, end - now))
            planned = max(1, peak_step - now)
            # Raise the LR as much more slowly as the forecast overshoots the target ...
            warmup = math.ceil(planned * crossing.worst_ratio / target)
            # ... within the run: half of what is left, so that it trains at the top too.
            left = (total_steps if total_steps is not None else plan.end) - now
            warmup = max(0, min(warmup, left // 2))
    elif alarmed and lr_now:
        lr = backoff * lr_now
    if failed_lr is not None:
        ceiling = safety * failed_lr
        lr = ceiling if lr is None else min(lr, ceiling)
    return Recommendation(lr, warmup)


class Advice:
    """The one recommendation a job shows at a time: the header, the API, ``edgewatch show``
    and the metrics all read ``current``, which changes only with an alert. Within one
    episode of alarms (from leaving ``stable`` until back) the recommended LR never rises
    (but for a diverged job's, below):
    a later alert whose own forecast would allow more keeps the earlier cap, and says so.
    An LR at or above both the LR in force and the highest LR the plan reaches next is no
    recommendation: the LR in force is safe by the curvature. A diverged job gets no
    warmup (there is nothing left to warm up from) but the step to resume from, and the
    lowest LR advised up to its onset: estimates taken since measure the network as it
    blew up, not the one a checkpoint before the onset holds (the demo's diverging run
    read a sharpness of 9e7 and would have advised 1.7e-8)."""

    def __init__(self) -> None:
        self.current = Recommendation(None)
        self._advised: list[tuple[float, int]] = []  # (LR, alert's step) in this episode

    def publish(
        self,
        live: Recommendation,
        *,
        state: str,
        step: int,
        lr_in_force: float | None,
        planned_lr: float | None,
        resume_step: int | None,
    ) -> Recommendation:
        if state == "stable":
            self._advised = []
            self.current = Recommendation(None)
            return self.current
        lr, warmup, notes = live.lr, live.warmup_steps, []
        onset = -math.inf if resume_step is None else resume_step + 1
        before = [advised for advised in self._advised if advised[1] <= onset]
        cap = min(self._advised, default=None)  # (lowest LR advised, the first step it was)
        if state == "diverged" and before:
            lr, at = min(before)
            notes.append(f"the LR advised at step {at}, before the onset, stands")
        elif cap is not None and lr is not None and lr > cap[0]:
            lr, warmup = cap[0], 0
            notes.append(f"the cap advised at step {cap[1]} stands")
        highest = max(lr_in_force or 0.0, planned_lr or 0.0)
        if lr is not None and highest > 0 and lr >= highest and state != "diverged":
            lr, warmup = None, 0
            notes = ["the LR in force is safe by the curvature forecast"]
        if state == "diverged":
            warmup = 0
        if lr is not None:
            self._advised.append((lr, step))
        resume = resume_step if state == "diverged" else None
        self.current = Recommendation(lr, warmup, resume, "; ".join(notes))
        return self.current


def explain(
    crossing: Crossing | None, recommendation: Recommendation, *, planned: bool, alarmed: bool
) -> str:
    """The forecast in words, from the same numbers the API serves."""
    if crossing is None:
        words = "no sharpness estimate in the forecast yet"
    else:
        level = (
            f"sustained level {crossing.level:.3g}" if crossing.level else "no sustained level yet"
        )
        if crossing.provisional:  # Adam-type: the first healthy estimate's (crossing.py)
            level = f"level {crossing.level:.3g} (provisional: the first healthy estimate's)"
        words = (
            f"sharpness {crossing.sharpness:.4g} (step {crossing.sharpness_step}) at the LR "
            f"{'planned' if planned else 'in force'} for step {crossing.worst} "
            f"({crossing.worst_lr:.3g}) gives ratio {crossing.worst_ratio:.3g}; "
            f"{level}, alarm at {crossing.alarm_ratio:.3g}"
        )
        if crossing.at is None and crossing.peak_ratio > crossing.worst_ratio:
            # Beyond the horizon the plan may hold a jump: name the riskiest step scanned.
            words += (
                f"; the plan's riskiest step ahead, {crossing.peak} ({crossing.peak_lr:.3g}), "
                f"ratio {crossing.peak_ratio:.3g}"
            )
    if not alarmed:
        return words
    if recommendation.resume_step is not None:
        lr = (
            "" if recommendation.lr is None else f" with the LR at or below {recommendation.lr:.3g}"
        )
        words += (
            f"; resume from the last checkpoint at or before step {recommendation.resume_step}"
            f" (the last healthy step){lr}"
        )
    elif recommendation.lr is not None:
        words += (
            f"; hold the LR at or below {recommendation.lr:.3g} until the sharpness allows "
            "the planned LR again, then resume the plan (or keep it capped)"
        )
        if recommendation.warmup_steps:
            words += f"; or warm up over {recommendation.warmup_steps} steps from here"
    if recommendation.note:
        words += f" ({recommendation.note})"
    return words
