"""The predictor's knobs and its alerts: what the daemon's settings set and what
``/api/jobs/{job_id}/alerts`` serves. Pure data, no torch.

``PredictorSettings`` is the one definition of the knobs: the daemon's ``[forecast]``
table, its ``EDGEWATCH_FORECAST_*`` variables, the ``--forecast-*`` flags of ``serve`` and
``replay`` and the README's table are all generated from (or checked against) its fields
and their docstrings (``field_docs``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Literal

from edgewatch.errors import ConfigError

State = Literal["stable", "approaching", "unstable", "diverged"]


@dataclasses.dataclass(frozen=True)
class PredictorSettings:
    """The rule's knobs; the defaults are those tuned by bench/instability/predict.py
    (bench/RESULTS.md)."""

    horizon: int = 100
    """A crossing this many steps ahead or nearer makes the job ``approaching``."""
    margin: float = 1.5
    """The forecast ratio, over max(1, sustained level), that counts as a crossing (1.0 is
    the quadratic's limit, no catapult headroom)."""
    sustained_window: int = 5
    """Recent teaching estimates whose median ratio is the sustained level."""
    trend_window: int = 4
    """Recent estimates the sharpness trend (log-linear in steps) is fitted to."""
    max_growth: float = 2.0
    """Cap on how much the extrapolated sharpness may grow."""
    provisional_level: int = 1
    """Adam-type optimizers: 1, the first estimate taken while the job was healthy and
    its LR held stands for the sustained level until estimates have matured into one; 0,
    the level is none (max(1, level) is 1) until then."""
    settle_steps: int = 50
    """Adam-type optimizers: preconditioned estimates before this many steps are left out
    of the forecast (the second-moment estimate has not settled)."""
    loss_excursion: float = 1.3
    """Short loss average over its running minimum that means the job is unstable."""
    damage: float = 1.3
    """Loss over its best above which a job does not return to stable."""
    loss_smoothing: float = 0.3
    """Weight of the newest loss (and precursor value) in the short averages."""
    noise_band: float = 1.0
    """The loss's noise (mean absolute deviation of its log) times this widens the
    excursion and damage thresholds (``precursors.LossHealth``)."""
    loss_noise_widths: float = 12.0
    """On a smooth loss a rise of this many noise widths is an excursion at once, below
    ``loss_excursion``: a 1.2× rise is fifteen widths of a curve with 1% step noise."""
    loss_excursion_floor: float = 1.1
    """No excursion under this ratio, however smooth the loss (a full-batch loss has
    almost no step noise, and a 2% bump is not an event)."""
    direction_margin: float = math.inf
    """Like ``margin``, for the curvature along the last update (Bai et al. 2025, arXiv
    2506.04805), one HVP per sharpness estimate; inf: off."""
    critical_margin: float = math.inf
    """Like ``margin``, for the critical sharpness η·λ_c/2 = η/η_c along the last update
    (Kalra et al. 2026, arXiv 2601.16979), forward passes only; inf: off."""
    grad_excursion: float = math.inf
    """Gradient norm over its baseline that makes the job ``approaching`` (inf: off)."""
    update_excursion: float = math.inf
    """Update norm per unit LR over its baseline that makes the job ``approaching``
    (inf: off)."""
    moment_excursion: float = math.inf
    """Adam's moment ratio (RMS of g/√v̂) over its baseline that makes the job
    ``approaching`` (inf: off)."""
    baseline_rate: float = 0.02
    """Weight of the newest value in the slow averages (the loss's and the precursors')."""
    persist: int = 2
    """Steps in a row a precursor must be over its threshold."""
    warm: int = 50
    """Steps of history before a precursor may alarm."""
    recover_steps: int = 50
    """Quiet steps before an alarm state goes back to stable."""
    safety: float = 0.8
    """The recommended LR keeps the forecast ratio under safety × max(1, sustained level)."""
    backoff: float = 0.5
    """Without sharpness to go by, the recommended LR is backoff × the LR in force."""
    lookahead: int = 2_000
    """Steps of the plan searched for a crossing (every step over twice the horizon, then
    every 10th: what a forecast costs, about 1 ms, at each estimate)."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            message = problem(field.name, getattr(self, field.name))
            if message:
                raise ConfigError(message)
        if self.lookahead < self.horizon:
            raise ConfigError(
                f"lookahead={self.lookahead} is shorter than horizon={self.horizon}: a crossing "
                "within the horizon could never be found; raise lookahead or lower horizon"
            )


_Rule = tuple[Callable[[float], bool], str]
_RATIO: _Rule = (lambda v: v >= 1, ">= 1 (a ratio over a baseline; inf means off)")
_WEIGHT: _Rule = (lambda v: 0 < v <= 1, "in (0, 1] (the weight of the newest value)")
_FACTOR: _Rule = (lambda v: 0 < v <= 1, "in (0, 1] (a fraction of the LR)")
_STEPS: _Rule = (lambda v: v >= 0, ">= 0 steps")
_RULES: dict[str, _Rule] = {
    "horizon": (lambda v: v >= 1, ">= 1 steps"),
    "margin": (lambda v: v > 0, "> 0 (1.0 is the quadratic's limit; inf turns the crossing off)"),
    "sustained_window": (lambda v: v >= 1, ">= 1 estimates"),
    "trend_window": (lambda v: v >= 2, ">= 2 estimates (a trend needs two points)"),
    "max_growth": (lambda v: v >= 1, ">= 1 (1: the sharpness is not extrapolated upwards)"),
    "provisional_level": (lambda v: v in (0, 1), "0 or 1 (off or on)"),
    "settle_steps": _STEPS,
    "loss_excursion": _RATIO,
    "damage": (lambda v: v >= 1, ">= 1 (a ratio over the loss's best)"),
    "loss_smoothing": _WEIGHT,
    "noise_band": (lambda v: 0 <= v < math.inf, ">= 0 and finite (0: no widening)"),
    "loss_noise_widths": (lambda v: v > 0, "> 0 (inf: only loss_excursion counts)"),
    "loss_excursion_floor": (lambda v: v >= 1, ">= 1 (a ratio over the running minimum)"),
    "direction_margin": _RATIO,
    "critical_margin": _RATIO,
    "grad_excursion": _RATIO,
    "update_excursion": _RATIO,
    "moment_excursion": _RATIO,
    "baseline_rate": _WEIGHT,
    "persist": (lambda v: v >= 1, ">= 1 steps"),
    "warm": _STEPS,
    "recover_steps": _STEPS,
    "safety": _FACTOR,
    "backoff": _FACTOR,
    "lookahead": (lambda v: v >= 1, ">= 1 steps"),
}


def problem(name: str, value: object) -> str | None:
    """What is wrong with ``value`` for the field ``name`` and how to fix it; None if
    nothing. The loaders call it per value, so that the message can name its source."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{name} must be a number (inf where it means off), got {value!r}"
    if type(getattr(PredictorSettings, name)) is int and not isinstance(value, int):
        return f"{name} must be a whole number, got {value!r}"
    check, wanted = _RULES[name]
    if math.isnan(value) or not check(value):
        return f"{name} must be {wanted}, got {value!r}"
    return None


@functools.cache
def field_docs() -> dict[str, str]:
    """Each field's docstring, on one line: the flags' help and the README's table."""
    import ast  # only the CLI and the README check need these
    import inspect

    body = ast.parse(inspect.getsource(PredictorSettings)).body[0]
    assert isinstance(body, ast.ClassDef)
    docs: dict[str, str] = {}
    for node, after in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


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
    resume_step: int | None = None
    """A diverged job: resume from a checkpoint at or before this step (the last healthy)."""
