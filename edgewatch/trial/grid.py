"""Which steps of the LR plan a pre-flight trains, and at which LR.

A long job's plan is too long to train, but what breaks jobs early lies in a short
stretch of it: the first steps (an LR too hot from the start), the warmup and its end,
where the LR meets the curvature (Kalra & Barkeshli 2024, arXiv 2406.09405), and any
scheduled rise. So the trial covers the plan from step 0 to a little past the step where
the plan's LR is highest (its *span*), and trains ``steps`` steps over it:

- when the span fits in ``steps``, the trial is the plan's first ``steps`` steps as
  they are (stride 1);
- otherwise the trial's step i trains at the plan's LR of step round(i · stride), with
  stride = span / steps: the plan compressed in time, its LRs unchanged.

Limits of the compression: the trial reaches each LR after ``stride`` times fewer updates
than the job will. A warmup is seen ``stride`` times faster than planned, which errs on
the side of caution (a faster ramp gives the network less time to flatten); but any
curvature that grows over many steps (progressive sharpening, Cohen et al. 2021,
arXiv 2103.00065) has had less time to grow when the peak comes, which errs the other
way. A crossing is located to within one stride of plan steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

PAST_PEAK = 0.25  # the span goes this share past the plan's highest LR ...
PAST_PEAK_MIN = 20  # ... and at least this many plan steps


@dataclasses.dataclass(frozen=True)
class TrialGrid:
    """The plan steps a trial trains, one per trial step, and their LRs."""

    plan_steps: tuple[int, ...]
    lrs: tuple[float, ...]
    stride: float
    """Plan steps per trial step (1.0: not compressed)."""
    peak_step: int
    """The plan step of the highest planned LR (the first such)."""
    peak_lr: float
    warmup_steps: int
    """Plan steps the LR rises for from step 0 (0: no warmup)."""

    def __len__(self) -> int:
        return len(self.plan_steps)


def warmup_length(lrs: Sequence[float]) -> int:
    """Steps over which the plan's LR rises, step after step, from step 0 (0: it does not;
    a rise after a flat stretch is a scheduled jump, not a warmup)."""
    steps = 0
    for i in range(1, len(lrs)):
        if not lrs[i] > lrs[i - 1] * (1 + 1e-9):
            break
        steps = i + 1
    return steps


def make_grid(plan: Sequence[float], steps: int) -> TrialGrid:
    """A grid of ``steps`` trial steps over ``plan`` (the LR of each plan step)."""
    if steps < 1 or not plan:
        raise ValueError(f"a pre-flight needs steps >= 1 and a plan, got steps={steps}")
    peak_lr = max(plan)
    peak_step = next(i for i, lr in enumerate(plan) if lr >= peak_lr)
    span = min(len(plan), peak_step + 1 + max(PAST_PEAK_MIN, math.ceil(PAST_PEAK * peak_step)))
    if span <= steps:
        chosen = list(range(min(steps, len(plan))))
        stride = 1.0
    else:
        stride = (span - 1) / (steps - 1) if steps > 1 else float(span)
        chosen = sorted({min(span - 1, round(i * stride)) for i in range(steps)})
        if peak_step not in chosen:  # the peak itself is always trained at
            chosen = sorted({*chosen, peak_step})
    return TrialGrid(
        tuple(chosen),
        tuple(float(plan[i]) for i in chosen),
        stride,
        peak_step,
        peak_lr,
        warmup_length(plan[: peak_step + 1]),
    )


def capped(plan: Callable[[int], float], cap: float) -> Callable[[int], float]:
    """The plan with its LR never above ``cap`` (a lower peak, same shape below it)."""
    return lambda step: min(plan(step), cap)


def scaled(plan: Callable[[int], float], factor: float) -> Callable[[int], float]:
    """The plan's shape at ``factor`` times its LRs (a lower peak, warmup and decay kept)."""
    return lambda step: plan(step) * factor


def first_jump(lrs: Sequence[float], after: int) -> int | None:
    """The first step after ``after`` where the LR rises by half or more in one step."""
    return next((i for i in range(max(1, after), len(lrs)) if lrs[i] > 1.5 * lrs[i - 1]), None)


def jump_scaled(plan: Callable[[int], float], at: int, factor: float) -> Callable[[int], float]:
    """The plan with everything from step ``at`` on (a scheduled rise) times ``factor``:
    the rise cut down, the plan's course after it kept."""
    return lambda step: plan(step) * (factor if step >= at else 1.0)


def stretched(plan: Callable[[int], float], warmup: int, factor: float) -> Callable[[int], float]:
    """The plan with its first ``warmup`` steps taking ``factor`` times as long (the same
    peak, reached later), the rest of the plan shifted by the extra steps."""
    longer = round(warmup * factor)

    def fn(step: int) -> float:
        if step < longer:
            return plan(min(warmup - 1, int(step / factor)))
        return plan(step - longer + warmup)

    return fn


def apply_fix(
    plan: Callable[[int], float],
    kind: str,
    peak_lr: float,
    warmup_steps: int,
    plan_peak: float,
    plan_warmup: int,
    jump_step: int | None = None,
) -> Callable[[int], float]:
    """The plan a ``Fix`` describes (``report.py``), from the original ``plan``."""
    if kind == "warmup" and plan_warmup > 0:
        return stretched(plan, plan_warmup, warmup_steps / plan_warmup)
    if kind == "jump" and jump_step is not None:
        return jump_scaled(plan, jump_step, min(1.0, peak_lr / plan(jump_step)))
    return scaled(plan, peak_lr / plan_peak)
