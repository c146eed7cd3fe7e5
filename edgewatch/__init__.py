"""edgewatch: sees a training job heading for instability before its loss spikes.

    import edgewatch
    mon = edgewatch.attach(optimizer, model=model, job="run-1")
    ...
    mon.step(loss)

    edgewatch.find_lr(model, optimizer, probe)   # the critical LR at initialisation
    edgewatch.preflight(model, optimizer, probe, scheduler, batches=..., loss=...)  # the plan

``attach``, ``Monitor``, ``find_lr`` and ``preflight`` need torch and are imported on first
use, so that ``import edgewatch`` (and the daemon) works where torch is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgewatch._version import __version__

if TYPE_CHECKING:
    from edgewatch.client import Monitor, attach
    from edgewatch.monitor.critical_lr import find_lr
    from edgewatch.trial import PreflightReport, preflight

__all__ = ["Monitor", "PreflightReport", "__version__", "attach", "find_lr", "preflight"]

_LAZY = {
    "attach": "edgewatch.client",
    "Monitor": "edgewatch.client",
    "find_lr": "edgewatch.monitor.critical_lr",
    "preflight": "edgewatch.trial",
    "PreflightReport": "edgewatch.trial",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgewatch' has no attribute {name!r}")
