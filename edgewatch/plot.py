"""``edgewatch plot JOB -o FILE.png``: one picture of a job for a post-mortem.

Four panels over the steps, sharing the x axis:
1. sharpness (each estimate) against the stability threshold at the LR in force
   (2/η for SGD, 38/η for Adam), log scale, with the LR on a second axis;
2. the stability ratio of each estimate, with 1.0 (the edge) marked;
3. the loss; 4. the gradient norm (both log scale when positive).
Every alert is a vertical line in its state's colour, labelled in the top panel; an
alert that forecast a crossing draws an arrow to the forecast step.

Reads the daemon's HTTP API, like ``edgewatch show``. Needs matplotlib (``pip install
'edgewatch[plot]'``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from edgewatch import api_client
from edgewatch.api_client import api_get
from edgewatch.errors import ConfigError
from edgewatch.monitor.thresholds import threshold_for
from edgewatch.schemas import views

STATE_COLOURS = {
    "stable": "#2ca02c",
    "approaching": "#ff7f0e",
    "unstable": "#d62728",
    "diverged": "#7f0000",
}
MAX_STEPS = 100_000  # one API page; longer jobs are drawn to their first 100k steps


def fetch(server: str, job: str) -> dict[str, Any]:
    """The job's current run (a job attached again under its name holds every run)."""
    found = api_client.job(server, job)
    steps = api_client.job_path(job, "steps", limit=MAX_STEPS, run=found.run)
    sharpness = api_client.job_path(job, "sharpness", limit=MAX_STEPS, run=found.run)
    return {
        "job": found,
        "steps": api_get(server, steps, timeout=60),
        "sharpness": api_get(server, sharpness),
        "alerts": api_client.alerts(server, job, found.run),
    }


def plot_job(data: dict[str, Any], path: str) -> None:
    with warnings.catch_warnings():
        # A diverged run's losses reach 1e300: log-scale transforms overflow on the way
        # to pixels, harmlessly (the curve leaves the top of the panel).
        warnings.simplefilter("ignore", RuntimeWarning)
        _plot(data, path)


def _plot(data: dict[str, Any], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("edgewatch plot needs matplotlib: pip install 'edgewatch[plot]'") from exc
    job, steps, estimates, alerts = data["job"], data["steps"], data["sharpness"], data["alerts"]
    if not steps:
        raise ConfigError(f"job {job.job_id!r} has no steps to plot yet")
    x = [s["step"] for s in steps]
    lrs = [s["lr"] for s in steps]
    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(11, 11), height_ratios=[3, 2, 2, 2])
    top, ratio_ax, loss_ax, grad_ax = axes
    kind = "preconditioned sharpness" if job.preconditioned else "sharpness"
    thresholds = [threshold_for(job.optimizer, lr) if lr > 0 else math.nan for lr in lrs]
    top.plot(x, thresholds, color="black", lw=1.2, label="stability threshold at the LR")
    top.plot(
        [e["step"] for e in estimates],
        [e["value"] for e in estimates],
        "o",
        ms=3,
        color="#1f77b4",
        label=kind,
    )
    _log_if_positive(top, [*thresholds, *(e["value"] for e in estimates)])
    top.set_ylabel(kind)
    lr_ax = top.twinx()
    lr_ax.plot(x, lrs, color="#9467bd", lw=1, alpha=0.7, label="learning rate")
    lr_ax.set_ylabel("learning rate", color="#9467bd")
    top.legend(loc="upper left", fontsize=8)
    ratios = [(e["step"], e["stability_ratio"]) for e in estimates if e.get("stability_ratio")]
    ratio_ax.plot([s for s, _ in ratios], [r for _, r in ratios], "o-", ms=3, lw=0.8)
    ratio_ax.axhline(1.0, color="red", lw=1, ls="--", label="1.0: the edge of stability")
    positive = [r for _, r in ratios if r > 0]
    if positive and max(positive) > 20 * min(positive):  # a blow-up would flatten the rest
        ratio_ax.set_yscale("log")
    ratio_ax.set_ylabel("stability ratio")
    ratio_ax.legend(loc="upper left", fontsize=8)
    for ax, key, label in ((loss_ax, "loss", "loss"), (grad_ax, "grad_norm", "gradient norm")):
        values = [math.nan if s[key] is None else s[key] for s in steps]
        ax.plot(x, values, lw=0.8)
        _log_if_positive(ax, values)
        ax.set_ylabel(label)
    grad_ax.set_xlabel("step")
    _draw_alerts(axes, top, alerts)
    fig.suptitle(f"edgewatch: {job.job_id} ({job.optimizer.get('kind')}, {job.status})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw_alerts(axes: Any, top: Any, alerts: list[views.Alert]) -> None:
    for alert in alerts:
        colour = STATE_COLOURS.get(alert.state, "grey")
        for ax in axes:
            ax.axvline(alert.step, color=colour, lw=1, alpha=0.8)
        top.annotate(
            alert.state,
            (alert.step, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color=colour,
        )
        to_go = alert.steps_to_instability
        if alert.state == "approaching" and to_go:
            top.annotate(
                "",
                xy=(alert.step + to_go, 0.9),
                xytext=(alert.step, 0.9),
                xycoords=("data", "axes fraction"),
                arrowprops={"arrowstyle": "->", "color": colour},
            )


def _log_if_positive(ax: Any, values: list[float]) -> None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if finite and min(finite) > 0:
        ax.set_yscale("log")
