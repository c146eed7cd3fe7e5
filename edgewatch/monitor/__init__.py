"""The stability math. Pure: no sockets, no files, no database.

Float-only functions (thresholds, the LR plan, the forecaster) import no torch: the
daemon uses them. The torch functions (Hessian-vector products, eigen-estimators,
sharpness, its tracker, the critical LR and critical sharpness) are imported on first
use, so that ``import edgewatch.monitor`` works where torch is absent. (No submodule
is named like a function it exports: importing ``monitor/sharpness.py`` would have made
``edgewatch.monitor.sharpness`` the module, not the function.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgewatch.monitor.forecast import (
    Alert,
    JobForecast,
    PredictorSettings,
)
from edgewatch.monitor.plan import LRPlan, compress
from edgewatch.monitor.thresholds import (
    OptimizerSpec,
    adam_threshold,
    gd_threshold,
    heavy_ball_threshold,
    nesterov_threshold,
    stability_threshold,
    threshold_for,
    uses_preconditioned_sharpness,
)

if TYPE_CHECKING:
    from edgewatch.monitor.critical_lr import CriticalLR, find_lr
    from edgewatch.monitor.curvature import (
        SharpnessEstimate,
        UpdateCurvature,
        adam_preconditioner,
        sharpness,
        update_curvature,
    )
    from edgewatch.monitor.direction import update_direction
    from edgewatch.monitor.eigen import EigenEstimate, NotConvergedWarning, top_eigenvalue
    from edgewatch.monitor.hvp import HessianOperator
    from edgewatch.monitor.line_search import CriticalSharpness, critical_sharpness
    from edgewatch.monitor.progress import TrackedEstimate
    from edgewatch.monitor.tracking import SharpnessTracker

__all__ = [
    "Alert",
    "CriticalLR",
    "CriticalSharpness",
    "EigenEstimate",
    "HessianOperator",
    "JobForecast",
    "LRPlan",
    "NotConvergedWarning",
    "OptimizerSpec",
    "PredictorSettings",
    "SharpnessEstimate",
    "SharpnessTracker",
    "TrackedEstimate",
    "UpdateCurvature",
    "adam_preconditioner",
    "adam_threshold",
    "compress",
    "critical_sharpness",
    "find_lr",
    "gd_threshold",
    "heavy_ball_threshold",
    "nesterov_threshold",
    "sharpness",
    "stability_threshold",
    "threshold_for",
    "top_eigenvalue",
    "update_curvature",
    "update_direction",
    "uses_preconditioned_sharpness",
]

_LAZY = {
    "CriticalLR": "edgewatch.monitor.critical_lr",
    "find_lr": "edgewatch.monitor.critical_lr",
    "EigenEstimate": "edgewatch.monitor.eigen",
    "NotConvergedWarning": "edgewatch.monitor.eigen",
    "top_eigenvalue": "edgewatch.monitor.eigen",
    "HessianOperator": "edgewatch.monitor.hvp",
    "SharpnessEstimate": "edgewatch.monitor.curvature",
    "UpdateCurvature": "edgewatch.monitor.curvature",
    "adam_preconditioner": "edgewatch.monitor.curvature",
    "sharpness": "edgewatch.monitor.curvature",
    "update_curvature": "edgewatch.monitor.curvature",
    "update_direction": "edgewatch.monitor.direction",
    "CriticalSharpness": "edgewatch.monitor.line_search",
    "critical_sharpness": "edgewatch.monitor.line_search",
    "SharpnessTracker": "edgewatch.monitor.tracking",
    "TrackedEstimate": "edgewatch.monitor.progress",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgewatch.monitor' has no attribute {name!r}")
