"""The fields of a ``Sharpness`` record (``schemas``), from a finished λ_max estimate or
a critical-sharpness search of ``client/curvature.py``. Non-finite readings travel as
None: the wire carries no NaN or infinity."""

from __future__ import annotations

from typing import Any

from edgewatch.monitor.line_search import CriticalSharpness
from edgewatch.monitor.progress import TrackedEstimate
from edgewatch.schemas import CRITICAL_METHOD
from edgewatch.schemas.views import finite


def estimate_fields(est: TrackedEstimate, seconds: float, lr: float) -> dict[str, Any]:
    """A λ_max estimate (λ_max(P⁻¹H) for Adam) that took ``seconds`` over its slices."""
    curvature = est.update_curvature_preconditioned if est.preconditioned else est.update_curvature
    return {
        "value": est.value,
        "preconditioned": est.preconditioned,
        "method": "lanczos",
        "matvecs": est.matvecs,
        "residual": est.residual,
        "seconds": seconds,
        "lr": lr,
        "update_curvature": finite(curvature),
        "eta_max": finite(est.eta_max),
    }


def critical_fields(found: CriticalSharpness, seconds: float, lr: float) -> dict[str, Any]:
    """A critical-sharpness search that found a step (forward passes only: no HVPs)."""
    return {
        "value": found.lambda_c,
        "method": CRITICAL_METHOD,
        "matvecs": 0,
        "seconds": seconds,
        "lr": lr,
    }
