"""``edgewatch demo``: a real daemon, a small CPU training run heading for instability,
and what edgewatch saw.

The run is a two-layer MLP fitted by full-batch gradient descent whose learning rate
warms up linearly past the stability edge 2/λ (Cohen et al. 2021): the loss first falls;
η·λ crosses 2 near step 95, the loss spikes some fifty steps later, and the run diverges
near the end. edgewatch measures λ throughout, reads the warmup's plan from the
scheduler, and forecasts the crossing before the spike.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from edgewatch import api_client
from edgewatch.api_client import DEFAULT_SERVER
from edgewatch.monitor.thresholds import threshold_for
from edgewatch.server.process import spawn_daemon, wait_healthy

LR_START, LR_END = 0.05, 1.0
# A demo lasts seconds and its edge-to-spike window is ~30 steps, so it gives curvature
# 80% of the time (the default is 2%), for a reading every ~10-25 steps.
DEMO_BUDGET = 0.8


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


def train(endpoint: str, job: str, steps: int) -> None:
    import torch

    import edgewatch

    torch.manual_seed(0)
    x = torch.randn(512, 16)
    y = torch.sin(x @ torch.randn(16, 1)) + 0.1 * torch.randn(512, 1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR_START)
    # Linear warmup from 0.05 to 1.0: with sharpness λ ≈ 5, η·λ crosses 2 near step 95.
    warmup = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 1 + s * (LR_END / LR_START - 1) / steps
    )

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
        budget=DEMO_BUDGET,
    ) as mon:
        for step in range(steps):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            warmup.step()
            mon.step(loss)
            optimizer.zero_grad()
            if not torch.isfinite(loss):
                print(f"  step {step:4d}  loss {loss.item()}: the run has diverged; stopping it")
                mon.close("failed")
                break
            if step % 25 == 0 or step == steps - 1:
                lr = optimizer.param_groups[0]["lr"]
                print(f"  step {step:4d}  lr {lr:.3f}  loss {loss.item():.4g}")
    print(f"  monitor: {mon.stats}")


def what_edgewatch_saw(server: str, job: str) -> None:
    """The forecast as the daemon raised it (its alerts), against when the loss spiked:
    the first step whose loss is non-finite or twice its best so far."""
    found = api_client.job(server, job)  # its current run (a job re-attached has more)
    optimizer, run = found.optimizer, found.run
    estimates = api_client.job_list(server, job, "sharpness", run=run)
    steps = api_client.job_list(server, job, "steps", run=run)
    alerts = api_client.alerts(server, job, run)
    best, spike = float("inf"), None
    for s in steps:
        if s["loss"] is None or s["loss"] >= 2 * best:  # non-finite (stored as null) or doubled
            spike = s
            break
        best = min(best, s["loss"])
    print(f"  {len(estimates)} sharpness estimates over {len(steps)} steps; alerts:")
    for a in alerts:
        to_go = a.steps_to_instability
        forecast = "-" if to_go is None else f"{to_go:.0f}"
        print(f"  step {a.step:4d}  {a.state.upper():11s} steps to instability {forecast}")
        print(f"             {a.reason}")
    if spike is not None:
        loss_text = "non-finite" if spike["loss"] is None else f"{spike['loss']:.3g}"
        print(
            f"  step {spike['step']:4d}  the loss spiked ({loss_text}, over twice its best "
            f"{best:.3g})"
        )
    first = next((a for a in alerts if a.state != "stable"), None)
    lr_at = {s["step"]: s["lr"] for s in steps}
    if first is not None and spike is not None and first.step < spike["step"]:
        lr = lr_at[first.step]
        print(
            f"  => edgewatch warned {spike['step'] - first.step} steps before the loss spiked,"
            f" recommending lr <= {first.recommended_lr:.3g}"
            + (
                f" or a warmup over {first.recommended_warmup_steps} steps"
                if first.recommended_warmup_steps
                else ""
            )
            + f" (the LR then was {lr:.3g}; the sharpness threshold at it"
            f" {threshold_for(optimizer, lr):.3g})"
        )


def the_jobs(server: str, job: str) -> None:
    """What the daemon holds now, as ``edgewatch jobs`` and ``edgewatch show`` read it."""
    for found in api_client.jobs(server):
        print(
            f"  {found.job_id}  {found.status}  last step {found.last_step}  "
            f"{found.records} records"
        )
    analysis = api_client.job(server, job).analysis
    print(f"  {job}: {analysis.state.upper()}  ({analysis.reason})")
    print(f"  (the same from the shell: edgewatch jobs --server {server};")
    print(f"   edgewatch show {job} --server {server})")


def keep_serving(daemon: subprocess.Popen[bytes]) -> None:
    """Let a person look at the page: serve until Ctrl-C (the terminal sends SIGINT to the
    daemon too, which then stops as it does on SIGTERM). Not on a terminal (CI, a pipe),
    the demo stops at once instead."""
    print("   the daemon keeps serving it: open it in a browser; Ctrl-C stops", flush=True)
    try:
        while daemon.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print()


def run_demo(steps: int = 600, workdir: str = ".demo") -> int:
    Path(workdir).mkdir(parents=True, exist_ok=True)
    db = Path(workdir) / "edgewatch.db"
    for leftover in Path(workdir).glob("edgewatch.db*"):
        leftover.unlink()
    zmq_port = 5555 if _port_free(5555) else _free_port()
    http_port = 9108 if _port_free(9108) else _free_port()
    endpoint = f"tcp://127.0.0.1:{zmq_port}"
    server = DEFAULT_SERVER if http_port == 9108 else f"http://127.0.0.1:{http_port}"
    print(f"== starting the daemon: ZeroMQ {endpoint}, HTTP {server}, SQLite {db}")
    daemon = spawn_daemon(
        f"sqlite:///{db}", endpoint, f"127.0.0.1:{http_port}", args=("--log-level", "WARNING")
    )
    try:
        wait_healthy(server, daemon)
        job = "demo-mlp-warmup"
        print(
            f"\n== training {job!r}: full-batch GD, LR warming up {LR_START} -> {LR_END};"
            f"\n   curvature gets {DEMO_BUDGET:.0%} of its time (attach's default is 2%: a run"
            "\n   of your own gets far fewer sharpness estimates, README 'Budget')"
        )
        train(endpoint, job, steps)
        print("\n== what edgewatch saw")
        what_edgewatch_saw(server, job)
        print("\n== the daemon's jobs")
        the_jobs(server, job)
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
        page = f"{server}/jobs/{urllib.parse.quote(job, safe='')}"
        print(f"\n== the job's page: {page}\n   every job: {server}/")
        if sys.stdout.isatty():
            keep_serving(daemon)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            status = daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            status = daemon.wait()
        print(f"\n== daemon stopped (exit status {status}); the data stays in {db}")
    return 0 if status == 0 else 1
