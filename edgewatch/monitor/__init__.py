"""The stability math. Pure: no sockets, no files, no database.

Float-only functions (thresholds) import no torch: the daemon uses them.
"""

from edgewatch.monitor.thresholds import (
    adam_threshold,
    gd_threshold,
    heavy_ball_threshold,
    nesterov_threshold,
    stability_threshold,
    threshold_for,
    uses_preconditioned_sharpness,
)

__all__ = [
    "adam_threshold",
    "gd_threshold",
    "heavy_ball_threshold",
    "nesterov_threshold",
    "stability_threshold",
    "threshold_for",
    "uses_preconditioned_sharpness",
]
