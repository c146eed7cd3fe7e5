"""edgewatch: sees a training job heading for instability before its loss spikes.

    import edgewatch
    mon = edgewatch.attach(optimizer, model=model, job="run-1")
    ...
    mon.step(loss)

    edgewatch.find_lr(model, optimizer, probe)   # the critical LR at initialisation

``attach``, ``Monitor`` and ``find_lr`` need torch and are imported on first use, so that
``import edgewatch`` (and the daemon) works where torch is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgewatch._version import __version__

if TYPE_CHECKING:
    from edgewatch.client import Monitor, attach
    from edgewatch.monitor.critical_lr import find_lr

__all__ = ["Monitor", "__version__", "attach", "find_lr"]

_LAZY = {
    "attach": "edgewatch.client",
    "Monitor": "edgewatch.client",
    "find_lr": "edgewatch.monitor.critical_lr",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgewatch' has no attribute {name!r}")
