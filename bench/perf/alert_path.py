"""`make bench-alerts`: time from the record that changes a job's state to the webhook.

The end-to-end setup of tests/test_alert_path.py (a real daemon, Prometheus with the
shipped rules, Alertmanager with the shipped routing, a local webhook), run with two
sets of intervals: the test's (scrape and rule evaluation every 1 s, group_wait 1 s) and
the shipped ones (scrape 5 s, evaluation 15 s, group_wait 10 s). The delay is measured
from the wall time of the record that changed the state (the alert's ``wall_time`` in
``/api/jobs/{job}/alerts``) to the webhook's receipt. What bounds it: the client's
chunking (0.5 s) and the daemon's commit (0.1 s), then one scrape interval, one
evaluation interval, and group_wait.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import header
from edgewatch.server import Daemon, Settings
from edgewatch_testkit import stack
from edgewatch_testkit.toy import warmup_past_the_edge

RUNS = 3
SETUPS = {
    "test intervals (scrape 1 s, evaluation 1 s, group_wait 1 s)": ("1s", "1s", "1s"),
    "shipped intervals (scrape 5 s, evaluation 15 s, group_wait 10 s)": ("5s", "15s", "10s"),
}
ALERTS = {"approaching": "EdgewatchApproachingInstability", "diverged": "EdgewatchDiverged"}


def one_run(scrape: str, evaluation: str, group_wait: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        daemon = Daemon(
            Settings(
                db=f"sqlite:///{work / 'e.db'}",
                bind="tcp://127.0.0.1:*",
                http="127.0.0.1:0",
                forecast_margin=1.0,  # the quadratic: no catapult headroom
            )
        ).start()
        hook = stack.Webhook()
        try:
            with (
                stack.alertmanager(work / "am", hook.url, group_wait=group_wait) as am,
                stack.prometheus(
                    work / "prom",
                    targets=[daemon.http_url.removeprefix("http://")],
                    alertmanager=am,
                    interval=scrape,
                    evaluation=evaluation,
                ),
            ):
                warmup_past_the_edge("timed", daemon.endpoint, seconds_per_step=0.02)
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    names = {a["labels"]["alertname"] for _, _, a in hook.alerts()}
                    if set(ALERTS.values()) <= names:
                        break
                    time.sleep(0.2)
            with urllib.request.urlopen(daemon.http_url + "/api/jobs/timed/alerts") as r:
                changes = {a["state"]: a["wall_time"] for a in json.load(r)}
            received = {}
            for _, when, alert in hook.alerts():
                if alert["status"] == "firing":
                    received.setdefault(alert["labels"]["alertname"], when)
            return {
                state: received[name] - changes[state]
                for state, name in ALERTS.items()
                if name in received and state in changes
            }
        finally:
            hook.close()
            daemon.stop()


def main() -> int:
    if stack.missing():
        print(f"skipped: {stack.skip_reason()}")
        return 0
    lines = [header("Alert path: record to webhook", "make bench-alerts"), ""]
    lines += ["| setup | alert | delays (s) | median (s) |", "|---|---|---|---|"]
    for name, intervals in SETUPS.items():
        delays: dict[str, list[float]] = {state: [] for state in ALERTS}
        for _ in range(RUNS):
            for state, delay in one_run(*intervals).items():
                delays[state].append(delay)
        for state, values in delays.items():
            shown = ", ".join(f"{v:.1f}" for v in values) or "not delivered"
            median = f"{statistics.median(values):.1f}" if values else "-"
            lines.append(f"| {name} | {ALERTS[state]} | {shown} | {median} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
