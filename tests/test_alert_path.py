"""End to end, real processes on loopback: a training client drives a job into
instability; the daemon forecasts it; a real Prometheus (scraping every second, the
shipped rules loaded) fires; a real Alertmanager (the shipped routing) delivers to a
webhook. A stable job trains beside it and must page nobody."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import DaemonFactory

from edgewatch_testkit import stack
from edgewatch_testkit.net import http_json
from edgewatch_testkit.toy import warmup_past_the_edge

pytestmark = pytest.mark.skipif(bool(stack.missing()), reason=stack.skip_reason())


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
            calm = threading.Thread(
                target=warmup_past_the_edge,
                args=("calm", daemon.endpoint),
                kwargs={"peak_lr": 0.1, "seconds_per_step": 0.02, "steps": 600},
            )
            calm.start()
            warmup_past_the_edge("heading-for-trouble", daemon.endpoint, seconds_per_step=0.02)
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
