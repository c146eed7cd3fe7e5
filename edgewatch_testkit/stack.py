"""Private Prometheus and Alertmanager processes on free ports, and a webhook receiver,
for the deploy/ tests and the end-to-end alert test (also used by bench/perf/alert_path.py).

The binaries come from Debian's ``prometheus`` and ``prometheus-alertmanager`` packages
(``.ci/run`` installs them); ``missing()`` says which are absent, for a skip reason.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from edgewatch.server.process import wait_healthy
from edgewatch_testkit import ROOT
from edgewatch_testkit.net import free_port

DEPLOY = ROOT / "deploy"
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")


def missing() -> list[str]:
    wanted = ["prometheus", "promtool", "amtool"]
    absent = [name for name in wanted if shutil.which(name) is None]
    if alertmanager_binary() is None:
        absent.append("alertmanager")
    return absent


def skip_reason() -> str:
    return (
        f"{', '.join(missing())} not installed: apt-get install prometheus "
        "prometheus-alertmanager (.ci/run does this where it can)"
    )


def alertmanager_binary() -> str | None:
    return next((b for b in ALERTMANAGER_BINARIES if shutil.which(b)), None)


@contextlib.contextmanager
def running(command: list[str], base_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_healthy(base_url, process, path="/-/ready")
            yield process
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def prometheus(
    workdir: Path,
    *,
    targets: list[str],
    alertmanager: str | None = None,
    interval: str = "1s",
    evaluation: str | None = None,
) -> Iterator[str]:
    """Prometheus with the shipped rules, scraping ``targets`` (HOST:PORT) every
    ``interval`` and evaluating rules every ``evaluation`` (default: as often); yields
    its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": evaluation or interval},
        "rule_files": [str(DEPLOY / "prometheus" / "rules" / "*.yml")],
        "scrape_configs": [
            dict(
                shipped["scrape_configs"][0],
                scrape_interval=interval,
                static_configs=[{"targets": targets}],
            )
        ],
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        "prometheus",
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with running(command, url, workdir / "prometheus.log"):
        yield url


@contextlib.contextmanager
def alertmanager(workdir: Path, webhook: str, group_wait: str = "1s") -> Iterator[str]:
    """Alertmanager with the shipped routing, every receiver pointed at ``webhook``;
    yields its HOST:PORT."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    config["route"].update(group_wait=group_wait, group_interval="1s")
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{webhook}/{receiver['name']}"
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    binary = alertmanager_binary()
    assert binary is not None
    command = [
        binary,
        f"--config.file={workdir / 'alertmanager.yml'}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip port: a single private instance
    ]
    with running(command, f"http://127.0.0.1:{port}", workdir / "alertmanager.log"):
        yield f"127.0.0.1:{port}"


class Webhook:
    """Collects Alertmanager's webhook posts: (receiver path, time received, payload)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, float, dict[str, Any]]] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hook.lock:
                    hook.posts.append((self.path, time.time(), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self) -> list[tuple[str, float, dict[str, Any]]]:
        """Every (receiver, time, alert) delivered so far, firing or resolved."""
        with self.lock:
            return [
                (path.strip("/"), when, alert)
                for path, when, payload in self.posts
                for alert in payload.get("alerts", [])
            ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def query(prometheus_url: str, expr: str) -> dict[str, Any]:
    url = f"{prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            result: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            result = json.load(exc)
    return result
