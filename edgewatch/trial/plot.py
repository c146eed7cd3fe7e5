"""The pre-flight's picture: sharpness × LR over the edge along the plan, and the loss.

Needs matplotlib (``pip install 'edgewatch[plot]'``), as ``edgewatch plot`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgewatch.errors import ConfigError

if TYPE_CHECKING:
    from edgewatch.trial.report import PreflightReport

COLOURS = {"safe": "#2ca02c", "borderline": "#ff7f0e", "unsafe": "#d62728"}


def draw(report: PreflightReport, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError(
            "the pre-flight plot needs matplotlib: pip install 'edgewatch[plot]'"
        ) from exc
    c = report.curves
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6), height_ratios=[3, 2])
    top.plot(c["est_step"], c["est_ratio"], "o-", ms=3, lw=1, label="sharpness × LR / edge")
    top.axhline(1.0, color="red", ls="--", lw=1, label="the edge of stability")
    top.axhline(0.9, color="orange", ls=":", lw=1, label="0.9: borderline")
    positive = [r for r in c["est_ratio"] if r > 0]
    if positive and max(positive) > 20 * min(positive):
        top.set_yscale("log")
    top.set_ylabel("stability ratio")
    lr_ax = top.twinx()
    lr_ax.plot(c["plan_step"], c["lr"], color="#9467bd", lw=1, alpha=0.7)
    lr_ax.set_ylabel("planned LR", color="#9467bd")
    top.legend(loc="upper left", fontsize=8)
    bottom.plot(c["plan_step"], c["loss"], lw=1)
    if c["loss"] and min(c["loss"]) > 0:
        bottom.set_yscale("log")
    bottom.set_ylabel("probe loss (trial)")
    bottom.set_xlabel("plan step")
    colour = COLOURS.get(report.verdict, "black")
    fig.suptitle(f"pre-flight: {report.verdict} — {report.reason}", color=colour, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
