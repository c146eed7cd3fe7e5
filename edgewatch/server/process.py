"""``edgewatch serve`` as a child process, for the demo, the benchmarks and the tests."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from typing import IO, Any


def spawn_daemon(
    db: str,
    bind: str,
    http: str,
    *,
    args: tuple[str, ...] = (),
    stdout: IO[Any] | int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``python -m edgewatch serve`` with these settings (and extra flags)."""
    command = [
        sys.executable,
        "-m",
        "edgewatch",
        "serve",
        "--db",
        db,
        "--bind",
        bind,
        "--http",
        http,
    ]
    return subprocess.Popen(
        [*command, *args], stdout=stdout, stderr=subprocess.STDOUT if stdout else None
    )


def wait_healthy(
    url: str, daemon: subprocess.Popen[bytes], timeout: float = 30.0, path: str = "/healthz"
) -> None:
    """Return once ``url`` + ``path`` answers; raise if the process exits or stays silent.
    (Also used for Prometheus and Alertmanager in the tests: ``path="/-/ready"``.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"{daemon.args!r} exited early with status {daemon.returncode}")
        try:
            urllib.request.urlopen(url + path, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url}{path} did not answer within {timeout:.0f}s")
