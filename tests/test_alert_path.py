"""End to end, real processes on loopback: a training client drives a job into
instability; the daemon forecasts it; a real Prometheus (scraping every second, the
shipped rules loaded) fires; a real Alertmanager (the shipped routing) delivers to a
webhook. A stable job trains beside it and must page nobody."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
import stack
import torch
from conftest import DaemonFactory, http_json

import edgewatch

pytestmark = pytest.mark.skipif(bool(stack.missing()), reason=stack.skip_reason())


def train(job: str, endpoint: str, peak_lr: float, seconds_per_step: float) -> None:
    """GD on 0.5·(10·a² + b²) with the LR warming up to ``peak_lr`` over 400 steps
    (stable while lr < 0.2); slowed so that each state lasts a few scrapes."""
    w = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    curvature = torch.tensor([10.0, 1.0], dtype=torch.float64)

    def loss_fn() -> torch.Tensor:
        return 0.5 * (curvature * w * w).sum()

    optimizer = torch.optim.SGD([w], lr=peak_lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 400))
    with edgewatch.attach(
        optimizer, job=job, endpoint=endpoint, probe=loss_fn, scheduler=schedule, budget=0.5
    ) as mon:
        for step in range(1200):
            loss = loss_fn()
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            mon.step(loss)
            if not math.isfinite(loss.item()):
                mon.close("failed")
                return
            time.sleep(seconds_per_step if step < 260 else seconds_per_step / 10)


def test_instability_reaches_the_webhook_and_a_stable_job_pages_nobody(
    make_daemon: DaemonFactory, tmp_path: Path
) -> None:
    # A quadratic has no catapult headroom over 2/η: the daemon alarms at the limit.
    daemon = make_daemon(forecast_margin=1.0)
    webhook = stack.Webhook()
    http = daemon.http_url.removeprefix("http://")
    try:
        with (
            stack.alertmanager(tmp_path / "am", webhook.url) as am,
            stack.prometheus(tmp_path / "prom", targets=[http], alertmanager=am),
        ):
            calm = threading.Thread(target=train, args=("calm", daemon.endpoint, 0.1, 0.02))
            calm.start()
            train("heading-for-trouble", daemon.endpoint, 0.4, 0.02)
            calm.join()
            wanted = {"EdgewatchApproachingInstability", "EdgewatchDiverged"}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                seen = {a["labels"]["alertname"] for _, _, a in webhook.alerts()}
                if wanted <= seen:
                    break
                time.sleep(0.5)
    finally:
        webhook.close()
    delivered = webhook.alerts()
    by_name = {a["labels"]["alertname"]: (receiver, when, a) for receiver, when, a in delivered}
    assert wanted <= set(by_name), f"delivered: {sorted(by_name)}"
    receiver, _, approaching = by_name["EdgewatchApproachingInstability"]
    assert receiver == "ticket" and approaching["labels"]["severity"] == "warning"
    assert approaching["labels"]["job_id"] == "heading-for-trouble"
    assert float(approaching["annotations"]["recommended_learning_rate"]) == pytest.approx(
        0.16, rel=0.05
    )
    receiver, _, diverged = by_name["EdgewatchDiverged"]
    assert receiver == "pager" and diverged["labels"]["job_id"] == "heading-for-trouble"
    assert diverged["annotations"]["recommended_learning_rate"]
    assert all(a["labels"].get("job_id") != "calm" for _, _, a in delivered)
    assert http_json(daemon.http_url + "/api/jobs/calm/alerts") == []

    # From the record that changed the state to the webhook (printed for the record).
    changes = {
        a["state"]: a for a in http_json(daemon.http_url + "/api/jobs/heading-for-trouble/alerts")
    }
    for state, name in (
        ("approaching", "EdgewatchApproachingInstability"),
        ("diverged", "EdgewatchDiverged"),
    ):
        delay = by_name[name][1] - changes[state]["wall_time"]
        print(f"{name}: {delay:.2f} s from the record to the webhook")
        assert 0 < delay < 30
