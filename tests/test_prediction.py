"""The forecast end to end: a real client, a real daemon, the alerts API, the gauges, the
CLI, replay of the stored job and of an exported trace, and a restart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import DaemonFactory, metric

import edgewatch
from edgewatch.cli import main
from edgewatch_testkit.net import http_json
from edgewatch_testkit.toy import warmup_past_the_edge

# A quadratic has none of a network's catapult headroom: the forecast alarms at its limit.
QUADRATIC = {"forecast_margin": 1.0}


def test_a_warmup_past_the_edge_is_forecast_then_diverged(
    make_daemon: DaemonFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = make_daemon(**QUADRATIC)
    spike, nonfinite, mon = warmup_past_the_edge("warmup", daemon.endpoint)
    assert spike is not None
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
    assert main(["replay", "replayed", "--db", sqlite_url, "--margin", "2.5"]) == 0
    assert "DIFFERENT from" in capsys.readouterr().out  # not the daemon's setting
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


def test_a_finished_job_keeps_its_final_state_across_a_restart(
    make_daemon: DaemonFactory, sqlite_url: str
) -> None:
    first = make_daemon(**QUADRATIC)
    warmup_past_the_edge("ended", first.endpoint)  # diverges, then the job ends ("failed")
    before = http_json(first.http_url + "/api/jobs/ended")
    assert before["status"] == "failed" and before["analysis"]["state"] == "diverged"
    first.stop()
    second = make_daemon(sqlite_url, **QUADRATIC)
    after = http_json(second.http_url + "/api/jobs/ended")
    assert after["analysis"]["state"] == "diverged"
    last_alert = http_json(second.http_url + "/api/jobs/ended/alerts")[-1]
    assert after["analysis"]["reason"] == last_alert["reason"]  # the last alert's words
    assert after["analysis"]["recommended_lr"] == before["analysis"]["recommended_lr"]
    assert metric(second, "edgewatch_state", job_id="ended", state="diverged") == 1.0
    # The last readings are the stored ones; what only a replay would know is unknown, not
    # a default that contradicts the reason text.
    for key in ("lr", "sharpness", "sharpness_step", "stability_threshold"):
        assert after[key] is not None and after[key] == pytest.approx(before[key]), key
    assert after["grad_norm"] == before["grad_norm"]  # null: it overflowed at the end
    assert after["analysis"]["alarm_ratio"] is None
    assert after["analysis"]["planned_lr"] is before["analysis"]["planned_lr"] is True


def adamw_regression(daemon_endpoint: str, job: str, lr: float, steps: int) -> list[float]:
    """A ReLU MLP regressed with AdamW at ``lr`` through the real client, sharpness on."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

    def probe() -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(x[:64]), y[:64])

    losses = []
    with edgewatch.attach(
        optimizer, model, job=job, endpoint=daemon_endpoint, probe=probe, total_steps=steps
    ) as mon:
        for _ in range(steps):
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            mon.step(loss)
            losses.append(float(loss.detach()))
    return losses


def test_a_too_hot_start_is_caught_by_step_3_and_a_healthy_one_raises_nothing(
    make_daemon: DaemonFactory,
) -> None:
    daemon = make_daemon()
    hot = adamw_regression(daemon.endpoint, "too-hot", lr=3.0, steps=20)
    assert hot[1] > 100 * hot[0]  # the loss explodes at the first update
    alerts = http_json(daemon.http_url + "/api/jobs/too-hot/alerts")
    assert alerts and alerts[0]["step"] <= 3
    assert alerts[0]["state"] in ("unstable", "diverged")
    # Adam's unsettled first steps hold back the curvature alarm, not the loss's evidence.
    healthy = adamw_regression(daemon.endpoint, "healthy", lr=1e-2, steps=200)
    assert healthy[-1] < 0.1 * healthy[0]
    assert http_json(daemon.http_url + "/api/jobs/healthy/alerts") == []
