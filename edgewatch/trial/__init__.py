"""Pre-flight (``edgewatch.preflight``): judge a whole LR plan on a copy of the model before a
long job starts. (A package named ``trial``: ``edgewatch.preflight`` is the function.)

    report = edgewatch.preflight(model, optimizer, probe, scheduler, steps=200,
                                 batches=loader, loss=lambda m, b: loss_fn(m(b[0]), b[1]))
    print(report)                       # safe / borderline / unsafe, margin, fix
    report.save_png("preflight.png")
    edgewatch.attach(optimizer, model=model, job="run", preflight=report)

``grid.py`` (which plan steps are trained), ``train.py`` (the copy and its training),
``verdict.py`` (floats only), ``batch.py`` (batch size), ``report.py``, ``plot.py``,
``command.py`` (``edgewatch preflight``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgewatch.trial.report import BatchScaling, Fix, PreflightReport
from edgewatch.trial.verdict import Rules

if TYPE_CHECKING:
    from edgewatch.trial.run import preflight

__all__ = ["BatchScaling", "Fix", "PreflightReport", "Rules", "preflight"]


def __getattr__(name: str) -> Any:
    # torch on first use only: ``edgewatch preflight`` is registered by a CLI that must
    # import where torch is not installed.
    if name == "preflight":
        from edgewatch.trial.run import preflight

        return preflight
    raise AttributeError(f"module 'edgewatch.trial' has no attribute {name!r}")
