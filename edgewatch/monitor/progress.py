"""What the sharpness tracker (``monitor/tracking.py``) keeps of an estimate: the one
in progress across its slices, and the finished one it reports."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch

from edgewatch.monitor.curvature import SharpnessEstimate
from edgewatch.monitor.subspace import RitzSubspace

Stop = Literal["bound", "stagnation", "budget"]
# How a slice's probe evaluations are made: the probe graph and its double-backward
# products, or plain gradients for difference products. The client prices them apart.
UNIT_KINDS = ("exact", "difference")


def unit_kind(exact: bool) -> str:
    """The unit kind of products made exactly (double backward) or not (differences)."""
    return "exact" if exact else "difference"


@dataclasses.dataclass(frozen=True)
class TrackedEstimate(SharpnessEstimate):
    """A finished estimate. ``matvecs`` counts its Lanczos HVPs over all its slices
    (not the directional one); ``value``, ``residual``, ``error_bound``, ``gap`` and
    ``loss`` are the last slice's."""

    slices: int = 1
    """Training steps (calls to ``advance``) the estimate spanned."""
    restarted: bool = False
    """Started cold or from the previous vector's neighbourhood, not warm."""
    update_curvature: float = math.nan
    """uᵀHu/‖u‖² along the optimizer's last update u; NaN without one."""
    update_curvature_preconditioned: float = math.nan
    """uᵀHu/(uᵀPu) for Adam-type optimizers (compare with the threshold of λ_max(P⁻¹H))."""
    eta_max: float = math.nan
    """2·gᵀu/(uᵀHu), g the probe loss's gradient; NaN without a direction."""
    stopped: Stop = "bound"
    """What ended it: the error bound, the Ritz value's stagnation, or the HVP cap."""
    exact: bool = True
    """Its products by double backward; False: by differences of gradients."""


@dataclasses.dataclass
class Progress:
    """The estimate in progress."""

    vector: torch.Tensor
    gap: float | None
    restarted: bool
    subspace: RitzSubspace
    matvecs: int = 0
    slices: int = 0
    since: int = 0  # matvecs when this (re)start began
    probe_seed: int = 0  # the global generators' seed in every slice: same dropout masks
    exact: bool = True  # products by double backward (else differences of gradients)
    compare: bool = False  # its first slice compares difference products with exact ones
    values: list[float] = dataclasses.field(default_factory=list)  # θ of each slice since
