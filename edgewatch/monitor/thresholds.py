"""Stability thresholds of first-order optimizers, as pure functions on floats.

Each is the largest sharpness λ for which the optimizer, run on a quadratic with that
curvature, does not blow up; the daemon divides measured sharpness by it to get the
stability ratio (1.0 = at the edge). No torch here: the daemon uses these.

- Gradient descent: η·λ < 2 (Cohen et al. 2021, "Gradient Descent on Neural Networks
  Typically Occurs at the Edge of Stability", arXiv 2103.00065, §2).
- Heavy-ball momentum β: η·λ < 2 + 2β (ibid., Appendix; the classical condition for
  the Polyak iteration on a quadratic).
- Nesterov momentum β: η·λ < (2 + 2β) / (1 + 2β) (ibid., Appendix).
- Adam / AdamW with β1: the *preconditioned* sharpness λ_max(P⁻¹H) stays under
  (2 + 2β1) / ((1 − β1)·η), i.e. 38/η for β1 = 0.9 (Cohen et al. 2022, "Adaptive
  Gradient Methods at the Edge of Stability", arXiv 2207.14484, §3). Weight decay
  decoupled as in AdamW does not change it to first order.
- Anything else: the GD threshold 2/η on the raw sharpness, a documented fallback
  that is right for plain SGD-like updates and only a reference point otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

ADAM_KINDS = frozenset({"Adam", "AdamW", "NAdam", "RAdam", "Adamax", "SparseAdam", "FusedAdam"})


def gd_threshold(lr: float) -> float:
    """2/η: gradient descent is stable on curvature λ iff η·λ < 2."""
    return 2.0 / lr if lr > 0 else math.inf


def heavy_ball_threshold(lr: float, momentum: float) -> float:
    """(2 + 2β)/η for Polyak heavy-ball momentum β (PyTorch SGD with momentum, dampening 0)."""
    return (2.0 + 2.0 * momentum) / lr if lr > 0 else math.inf


def nesterov_threshold(lr: float, momentum: float) -> float:
    """(2 + 2β)/((1 + 2β)·η) for Nesterov momentum β."""
    return (2.0 + 2.0 * momentum) / ((1.0 + 2.0 * momentum) * lr) if lr > 0 else math.inf


def adam_threshold(lr: float, beta1: float) -> float:
    """(2 + 2β1)/((1 − β1)·η) on the preconditioned sharpness; 38/η at β1 = 0.9."""
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr) if lr > 0 else math.inf


def uses_preconditioned_sharpness(kind: str) -> bool:
    """Whether this optimizer is judged on λ_max(P⁻¹H) rather than λ_max(H)."""
    return kind in ADAM_KINDS


def threshold_for(optimizer: Mapping[str, Any], lr: float | None = None) -> float:
    """Threshold from an optimizer description (the wire's OptimizerInfo as a dict).

    ``lr`` is the learning rate in force; it defaults to the description's own.
    """
    kind = str(optimizer.get("kind", ""))
    lr = float(optimizer.get("lr", 0.0)) if lr is None else lr
    if uses_preconditioned_sharpness(kind):
        betas = optimizer.get("betas") or (0.9, 0.999)
        return adam_threshold(lr, float(betas[0]))
    momentum = float(optimizer.get("momentum") or 0.0)
    if momentum > 0:
        if optimizer.get("nesterov"):
            return nesterov_threshold(lr, momentum)
        return heavy_ball_threshold(lr, momentum)
    return gd_threshold(lr)


def _number(value: Any) -> float | None:
    # float() reads 0-d tensors too (capturable optimizers keep hyper-parameters as
    # tensors) without this module importing torch.
    return None if value is None else float(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerSpec:
    """An optimizer's kind and first param group's hyper-parameters, read once.

    The wire's ``OptimizerInfo`` carries the same fields; the daemon keeps that as a dict
    and passes it to :func:`threshold_for`, which reads :meth:`as_dict`'s keys.
    """

    kind: str
    """Class name, e.g. ``"AdamW"``, ``"SGD"``."""
    lr: float
    momentum: float | None = None
    nesterov: bool = False
    betas: tuple[float, float] | None = None
    eps: float | None = None
    weight_decay: float = 0.0
    param_groups: int = 1
    params: int = 0
    """Number of trainable scalars the optimizer updates."""

    @classmethod
    def of(cls, optimizer: Any) -> OptimizerSpec:
        """Read a live optimizer (anything with ``param_groups``); imports no torch."""
        groups = getattr(optimizer, "param_groups", None)
        if not groups:
            raise TypeError(f"needs an optimizer with param_groups, got {type(optimizer).__name__}")
        group = groups[0]
        betas = group.get("betas")
        lr = _number(group.get("lr"))
        return cls(
            kind=type(optimizer).__name__,
            lr=0.0 if lr is None else lr,
            momentum=_number(group.get("momentum")),
            nesterov=bool(group.get("nesterov", False)),
            betas=(float(betas[0]), float(betas[1])) if betas is not None else None,
            eps=_number(group.get("eps")),
            weight_decay=_number(group.get("weight_decay")) or 0.0,
            param_groups=len(groups),
            params=sum(p.numel() for g in groups for p in g.get("params", ())),
        )

    @property
    def preconditioned(self) -> bool:
        """Judged on λ_max(P⁻¹H) (Adam-type) rather than λ_max(H)."""
        return uses_preconditioned_sharpness(self.kind)

    def as_dict(self) -> dict[str, Any]:
        """The description :func:`threshold_for` and the wire's OptimizerInfo take."""
        return dataclasses.asdict(self)

    def threshold(self, lr: float | None = None) -> float:
        """The stability threshold at ``lr`` (default: the LR it was read with)."""
        return threshold_for(self.as_dict(), lr)


def stability_threshold(optimizer: Any) -> float:
    """Threshold of a live optimizer at its first param group's current LR.

    2/lr for SGD, (2+2β)/lr with heavy-ball momentum, 38/lr for Adam with β1 = 0.9.
    Reads ``type(optimizer).__name__`` and ``param_groups[0]``; imports no torch.
    """
    if not getattr(optimizer, "param_groups", None):
        raise TypeError(
            "stability_threshold() needs an optimizer with param_groups, "
            f"got {type(optimizer).__name__}"
        )
    return OptimizerSpec.of(optimizer).threshold()
