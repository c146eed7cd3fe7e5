"""The forecast end to end: a real client, a real daemon, the alerts API, the gauges, the
CLI, replay of the stored job and of an exported trace, and a restart."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from conftest import DaemonFactory, http_json, metric

import edgewatch
from edgewatch.cli import main

STEPS = 2000
WARMUP = 400
PEAK_LR = 0.4  # on curvature 10, GD is stable while lr < 0.2: crossed at step 199
# A quadratic has none of a network's catapult headroom: the forecast alarms at its limit.
QUADRATIC = {"forecast_margin": 1.0}


def warmup_past_the_edge(
    job: str, endpoint: str, *, close: bool = True
) -> tuple[int, int, edgewatch.Monitor]:
    """GD on 0.5·(10·a² + b²), the LR warming up past 2/10; stops at the first non-finite
    loss. Returns the step where the loss first doubled its running minimum (the spike),
    the non-finite step, and the monitor."""
    w = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    curvature = torch.tensor([10.0, 1.0], dtype=torch.float64)

    def loss_fn() -> torch.Tensor:
        return 0.5 * (curvature * w * w).sum()

    optimizer = torch.optim.SGD([w], lr=PEAK_LR)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / WARMUP))
    mon = edgewatch.attach(
        optimizer, job=job, endpoint=endpoint, probe=loss_fn, scheduler=schedule, budget=0.5
    )
    step, spike, best = 0, None, math.inf
    for step in range(STEPS):
        loss = loss_fn()
        if spike is None and loss.item() >= 2 * best:
            spike = step
        best = min(best, loss.item())
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        schedule.step()
        mon.step(loss)
        if not math.isfinite(loss.item()):
            break
    if close:
        mon.close("failed")
    assert spike is not None
    return spike, step, mon


def test_a_warmup_past_the_edge_is_forecast_then_diverged(
    make_daemon: DaemonFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = make_daemon(**QUADRATIC)
    spike, nonfinite, mon = warmup_past_the_edge("warmup", daemon.endpoint)
    assert mon.stats["unacknowledged"] == 0
    alerts = http_json(daemon.http_url + "/api/jobs/warmup/alerts")
    states = [(a["step"], a["state"]) for a in alerts]
    first_alarm = next(step for step, state in states if state != "stable")
    # The LR crosses 2/λ at step 199; the loss doubles tens of steps later.
    assert first_alarm <= spike - 20
    # Diverged at the first step whose loss or gradient norm is not finite (JSON null); the
    # norm (a sum of squares) overflows a step before the loss does.
    steps = http_json(daemon.http_url + "/api/jobs/warmup/steps")
    first_bad = next(s["step"] for s in steps if s["loss"] is None or s["grad_norm"] is None)
    assert first_bad in (nonfinite - 1, nonfinite)
    assert states[-1] == (first_bad, "diverged")
    approaching = next(a for a in alerts if a["state"] == "approaching")
    assert 0 < approaching["steps_to_instability"] <= 100
    assert approaching["recommended_lr"] == pytest.approx(0.8 * 2 / 10, rel=0.05)
    assert "sharpness" in approaching["reason"]

    assert metric(daemon, "edgewatch_state", job_id="warmup", state="diverged") == 1.0
    assert metric(daemon, "edgewatch_state", job_id="warmup", state="stable") == 0.0
    assert metric(daemon, "edgewatch_steps_to_instability", job_id="warmup") == 0.0
    assert metric(daemon, "edgewatch_recommended_learning_rate", job_id="warmup") is not None

    assert main(["show", "warmup", "--server", daemon.http_url]) == 0
    shown = capsys.readouterr().out
    assert "DIVERGED" in shown and "recommend" in shown and "approaching" in shown


def test_replay_of_the_stored_job_and_of_its_trace_gives_the_live_alerts(
    make_daemon: DaemonFactory, sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = make_daemon(**QUADRATIC)
    warmup_past_the_edge("replayed", daemon.endpoint)
    live = http_json(daemon.http_url + "/api/jobs/replayed/alerts")
    trace = tmp_path / "replayed.jsonl"

    margin = ["--margin", "1"]  # the daemon's setting
    assert (
        main(["replay", "replayed", "--db", sqlite_url, "--export", str(trace), "--json", *margin])
        == 0
    )
    stored = json.loads(capsys.readouterr().out)["alerts"]
    assert [(a["step"], a["state"]) for a in stored] == [(a["step"], a["state"]) for a in live]

    assert main(["replay", "--trace", str(trace), "--json", *margin]) == 0
    traced = json.loads(capsys.readouterr().out)["alerts"]
    assert traced == stored

    assert main(["replay", "replayed", "--db", sqlite_url, *margin]) == 0
    assert "the same as" in capsys.readouterr().out
    assert main(["replay", "replayed", "--db", sqlite_url]) == 0  # the default margin, 2.5
    assert "DIFFERENT from" in capsys.readouterr().out
    # Other settings on the same records: a later, narrower horizon alarms later.
    assert main(["replay", "--trace", str(trace), "--horizon", "10", "--json", *margin]) == 0
    narrow = json.loads(capsys.readouterr().out)["alerts"]
    assert narrow[0]["step"] > stored[0]["step"]


def test_a_restarted_daemon_rebuilds_the_forecast_of_running_jobs(
    make_daemon: DaemonFactory, sqlite_url: str
) -> None:
    first = make_daemon(**QUADRATIC)
    _, _, mon = warmup_past_the_edge("restarted", first.endpoint, close=False)
    deadline = time.monotonic() + 30
    while mon.stats["unacknowledged"] and time.monotonic() < deadline:
        time.sleep(0.05)
    before = http_json(first.http_url + "/api/jobs/restarted")
    alerts_before = http_json(first.http_url + "/api/jobs/restarted/alerts")
    first.stop()
    mon.close(timeout=0.5)  # its JobEnd never arrives: the job is still running

    second = make_daemon(sqlite_url, **QUADRATIC)
    after = http_json(second.http_url + "/api/jobs/restarted")
    assert after["status"] == "running"
    assert after["analysis"] == before["analysis"]
    assert after["analysis"]["state"] != "stable"  # the steps before the explosion were sent
    assert http_json(second.http_url + "/api/jobs/restarted/alerts") == alerts_before
