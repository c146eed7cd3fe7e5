"""``edgewatch demo``: a real daemon, a small CPU training run heading for instability,
and what edgewatch saw.

The run is a two-layer MLP fitted by full-batch gradient descent whose learning rate
warms up linearly past the stability edge 2/λ (Cohen et al. 2021): the loss first falls,
then oscillates and climbs as η·λ crosses 2.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from edgewatch.cli import DEFAULT_SERVER, api_get, main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon's servers do
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_healthy(url: str, daemon: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited early with status {daemon.returncode}")
        try:
            api_get(url, "/healthz", timeout=1.0)
            return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"the daemon did not answer on {url} within {timeout:.0f}s")


def train(endpoint: str, job: str, steps: int) -> None:
    import torch

    import edgewatch

    torch.manual_seed(0)
    x = torch.randn(512, 16)
    y = torch.sin(x @ torch.randn(16, 1)) + 0.1 * torch.randn(512, 1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 + 0.05 * s)  # 0.01 -> 0.16

    def probe() -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(x), y)

    with edgewatch.attach(
        optimizer,
        model=model,
        job=job,
        endpoint=endpoint,
        probe=probe,
        scheduler=warmup,
        total_steps=steps,
    ) as mon:
        for step in range(steps):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            warmup.step()
            mon.step(loss)
            optimizer.zero_grad()
            if step % 50 == 0 or step == steps - 1:
                lr = optimizer.param_groups[0]["lr"]
                print(f"  step {step:4d}  lr {lr:.3f}  loss {loss.item():.4g}")
    print(f"  monitor: {mon.stats}")


def run_demo(steps: int = 300, workdir: str = ".demo") -> int:
    Path(workdir).mkdir(parents=True, exist_ok=True)
    db = Path(workdir) / "edgewatch.db"
    for leftover in Path(workdir).glob("edgewatch.db*"):
        leftover.unlink()
    zmq_port = 5555 if _port_free(5555) else _free_port()
    http_port = 9108 if _port_free(9108) else _free_port()
    endpoint = f"tcp://127.0.0.1:{zmq_port}"
    server = DEFAULT_SERVER if http_port == 9108 else f"http://127.0.0.1:{http_port}"
    print(f"== starting the daemon: ZeroMQ {endpoint}, HTTP {server}, SQLite {db}")
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgewatch",
            "serve",
            "--db",
            f"sqlite:///{db}",
            "--bind",
            endpoint,
            "--http",
            f"127.0.0.1:{http_port}",
            "--log-level",
            "WARNING",
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        _wait_healthy(server, daemon)
        job = "demo-mlp-warmup"
        print(
            f"\n== training {job!r}: full-batch GD, LR warming up 0.01 -> 0.16 over {steps} steps"
        )
        train(endpoint, job, steps)
        print("\n== edgewatch jobs")
        main(["jobs", "--server", server])
        print(f"\n== edgewatch show {job}")
        main(["show", job, "--server", server])
        print(f"\n== Prometheus metrics at {server}/metrics, e.g.:")
        with urllib.request.urlopen(server + "/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(
                    (
                        "edgewatch_step{",
                        "edgewatch_loss{",
                        "edgewatch_learning_rate{",
                        "edgewatch_records_ingested_total",
                    )
                ):
                    print("  " + line)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            status = daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            status = daemon.wait()
        print(f"\n== daemon stopped (exit status {status}); the data stays in {db}")
    return 0 if status == 0 else 1
