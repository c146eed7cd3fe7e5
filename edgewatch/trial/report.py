"""What a pre-flight found: a short text, a record for the daemon, a picture."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from edgewatch.trial.grid import apply_fix
from edgewatch.trial.verdict import SMALL

MAX_POINTS = 200  # points of each curve kept in the record sent to the daemon


@dataclasses.dataclass(frozen=True)
class Fix:
    """A plan that stayed safe in a trial of its own (measured, not extrapolated)."""

    peak_lr: float
    warmup_steps: int
    verdict: str
    max_ratio: float
    """Sharpness × LR over the edge, the highest in its trial."""
    kind: str = "scale"
    """"warmup" (the same peak, a longer warmup), "scale" (the plan's shape at a lower
    peak) or "jump" (a scheduled rise at ``jump_step`` cut so that the LR after it is at
    most ``peak_lr``, the plan's course after it kept)."""
    jump_step: int | None = None

    @property
    def margin(self) -> float:
        return 1.0 / self.max_ratio if self.max_ratio > 0 else math.inf


@dataclasses.dataclass(frozen=True)
class BatchScaling:
    """How the threshold moves with the batch size, measured at both sizes."""

    trial_size: int | None
    target_size: int | None
    sharpness_trial: float
    sharpness_target: float
    kind: str
    """"batch sharpness" (SGD; Andreyev & Beneventano, arXiv 2412.20553) or
    "preconditioned sharpness" (Adam: λ_max(P⁻¹H_B), Cohen et al. 2022)."""
    edge_lr_trial: float
    edge_lr_target: float
    supported_lr: float
    """The LR at the target size with the trial's margin at its peak kept."""


@dataclasses.dataclass(frozen=True)
class PreflightReport:
    verdict: str
    """"safe", "borderline" or "unsafe"."""
    reason: str
    optimizer: str
    preconditioned: bool
    peak_lr: float
    peak_step: int
    warmup_steps: int
    trial_steps: int
    stride: float
    """Plan steps per trial step (1.0: the plan's first steps as they are)."""
    plan_steps: int
    """The plan steps the trial covered."""
    max_ratio: float
    peak_ratio: float
    crossing: tuple[int, float, float] | None
    """(plan step, LR, ratio) where sharpness × LR first reached the edge."""
    loss_peak: float
    recovered: bool
    flattened: bool | None
    safe_lr: float | None
    """The highest LR trained at in the trial before anything went wrong."""
    fix: Fix | None
    batch: BatchScaling | None
    seconds: float
    truncated: bool
    curves: dict[str, list[float]] = dataclasses.field(default_factory=dict, repr=False)
    """plan_step, lr, loss per trial step; est_step, est_lr, est_ratio per estimate."""

    @property
    def margin(self) -> float:
        """How far the LR at the peak could be raised before the edge: 1/peak ratio."""
        r = self.peak_ratio
        return 1.0 / r if r > 0 else math.inf

    def __str__(self) -> str:
        lines = [f"pre-flight: {self.verdict.upper()} ({self.reason})"]
        compressed = f", compressed {self.stride:.3g}:1" if self.stride > 1 else ""
        lines.append(
            f"  plan: peak LR {self.peak_lr:.3g} at step {self.peak_step}, warmup "
            f"{self.warmup_steps}; trial {self.trial_steps} steps over plan steps "
            f"0-{self.plan_steps}{compressed}, {self.optimizer}"
        )
        if math.isfinite(self.peak_ratio):
            lines.append(
                f"  at the peak: sharpness × LR = {self.peak_ratio:.3g} of the edge "
                f"(margin ×{self.margin:.3g}); highest {self.max_ratio:.3g}"
            )
        if self.crossing is not None and self.preconditioned:
            step, lr, ratio = self.crossing
            lines.append(
                f"  over its edge from plan step {step} (LR {lr:.3g}, ×{ratio:.3g}), where "
                "Adam-type optimizers train: the loss judges them"
            )
        elif self.crossing is not None:
            step, lr, ratio = self.crossing
            after = {
                True: "; the sharpness came back under the edge later (it flattened)",
                False: "; the sharpness did not come back under the edge",
                None: "",
            }
            ran_away = self.loss_peak >= SMALL and not self.recovered
            lines.append(
                f"  crosses the edge at plan step {step} (LR {lr:.3g}, ×{ratio:.3g})"
                f"{'' if ran_away else after[self.flattened]}"
            )
        if self.loss_peak >= SMALL:
            back = "came back" if self.recovered else "did not come back"
            lines.append(f"  loss rose to {self.loss_peak:.3g}× its best and {back}")
        if self.safe_lr is not None and self.verdict != "safe":
            lines.append(f"  highest LR safe in the trial: {self.safe_lr:.3g}")
        if self.fix is not None:
            f = self.fix
            lines.append(
                f"  fix ({f.kind}{'' if f.jump_step is None else f' at step {f.jump_step}'}): "
                f"peak LR {f.peak_lr:.3g}, warmup {f.warmup_steps} steps "
                f"({f.verdict} in its own trial, sharpness × LR ≤ {f.max_ratio:.3g} of the "
                f"edge, margin ×{f.margin:.3g})"
            )
        elif self.verdict != "safe":
            lines.append("  no fix found within the time budget")
        if self.batch is not None:
            b = self.batch
            lines.append(
                f"  batch {b.trial_size} -> {b.target_size}: {b.kind} {b.sharpness_trial:.3g}"
                f" -> {b.sharpness_target:.3g}; edge LR {b.edge_lr_trial:.3g} -> "
                f"{b.edge_lr_target:.3g}; supported peak LR {b.supported_lr:.3g}"
            )
        cut = "; stopped by the time budget" if self.truncated else ""
        lines.append(f"  took {self.seconds:.1f} s{cut}")
        return "\n".join(lines)

    def to_record(self) -> dict[str, Any]:
        """A JSON-able summary for the daemon (curves thinned to MAX_POINTS)."""
        out = dataclasses.asdict(self)
        out["margin"] = self.margin
        out["curves"] = {k: _thin(v) for k, v in self.curves.items()}
        cleaned: dict[str, Any] = _finite(out)
        return cleaned

    def fixed_plan(self, plan: Any) -> Callable[[int], float] | None:
        """The fix as a function step -> LR (to pass as the scheduler), from the plan:
        a function step -> LR, or the torch scheduler pre-flight was given (read ahead
        PLAN_STEPS steps on a private copy, its last LR held after); None when there is
        no fix."""
        f = self.fix
        if f is None:
            return None
        if hasattr(plan, "get_last_lr"):  # a torch scheduler: never called with a step
            from edgewatch.client.schedule import PLAN_STEPS
            from edgewatch.trial.run import planned_lrs

            lrs = planned_lrs(plan, plan.optimizer, PLAN_STEPS)
            plan = lambda step: lrs[min(step, len(lrs) - 1)]  # noqa: E731
        return apply_fix(
            plan, f.kind, f.peak_lr, f.warmup_steps, self.peak_lr, self.warmup_steps, f.jump_step
        )

    def save_png(self, path: str) -> None:
        from edgewatch.trial.plot import draw

        draw(self, path)


def _thin(values: list[float]) -> list[float]:
    if len(values) <= MAX_POINTS:
        return list(values)
    step = len(values) / MAX_POINTS
    return [values[int(i * step)] for i in range(MAX_POINTS)]


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
