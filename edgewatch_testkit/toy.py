"""Training loops whose behaviour is known in advance, for exact checks: ``run_toy``
(every per-step value known), ``warmup_past_the_edge`` (GD on a quadratic whose LR
warms up past 2/λ: the crossing step is known)."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

import edgewatch


def lr_at(i: int) -> float:
    return 0.001 * (1 + i % 97)


def loss_at(i: int) -> float:
    return 1.0 + (i % 13) * 0.25


def grad_at(i: int) -> float:
    return 0.5 + (i % 7)


def expected_grad_norm(i: int) -> float:
    return 2.0 * grad_at(i)  # four elements of grad_at(i): sqrt(4 g²)


def run_toy(job: str, endpoint: str, steps: int, **options: Any) -> edgewatch.Monitor:
    """Train ``steps`` SGD steps on one 4-element parameter; returns the closed monitor."""
    param = torch.zeros(4, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=lr_at(0))
    options.setdefault("close_timeout", 60.0)
    mon = edgewatch.attach(optimizer, job=job, endpoint=endpoint, total_steps=steps, **options)
    for i in range(steps):
        optimizer.param_groups[0]["lr"] = lr_at(i)
        param.grad = torch.full((4,), grad_at(i))
        optimizer.step()
        mon.step(torch.tensor(loss_at(i)))
        optimizer.zero_grad()
    mon.close()
    return mon


PEAK_LR = 0.4  # on curvature 10, GD is stable while lr < 0.2: crossed at step 199
WARMUP = 400


def warmup_past_the_edge(
    job: str,
    endpoint: str,
    *,
    peak_lr: float = PEAK_LR,
    seconds_per_step: float = 0.0,
    steps: int = 2000,
    close: bool = True,
) -> tuple[int | None, int, edgewatch.Monitor]:
    """GD on 0.5·(10·a² + b²), the LR warming up to ``peak_lr`` over 400 steps, until the
    loss is non-finite. ``seconds_per_step`` slows the first 260 steps (so that each
    forecast state lasts a few Prometheus scrapes). Returns the step where the loss first
    doubled its running minimum (None if never), the last step, and the monitor."""
    w = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    curvature = torch.tensor([10.0, 1.0], dtype=torch.float64)

    def loss_fn() -> torch.Tensor:
        return 0.5 * (curvature * w * w).sum()

    optimizer = torch.optim.SGD([w], lr=peak_lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / WARMUP))
    mon = edgewatch.attach(
        optimizer, job=job, endpoint=endpoint, probe=loss_fn, scheduler=schedule, budget=0.5
    )
    step, spike, best = 0, None, math.inf
    for step in range(steps):
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
        if seconds_per_step and step < 260:
            time.sleep(seconds_per_step)
    if close:
        mon.close("failed" if not math.isfinite(loss.item()) else "finished")
    return spike, step, mon


def run_spiky(
    job: str,
    endpoint: str | list[str],
    steps: int,
    *,
    pause: float = 0.0,
    close: bool = True,
    resend_after: float | None = None,
) -> edgewatch.Monitor:
    """SGD steps whose loss spikes (5x for 10 steps) every 1,500 steps: each spike is an
    alert in and, once the loss is calm again, an alert out. ``pause`` seconds every 50
    steps make a run last; ``close=False`` waits until everything is acknowledged and
    leaves the job running (no JobEnd), as a training process killed would, once the
    daemon has acknowledged every step."""
    param = torch.zeros(4, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=0.01)
    mon = edgewatch.attach(
        optimizer, job=job, endpoint=endpoint, total_steps=steps, close_timeout=60.0
    )
    if resend_after is not None and mon.sender is not None:
        mon.sender.resend_after = resend_after
    for i in range(steps):
        param.grad = torch.full((4,), 0.5 + (i % 7))
        optimizer.step()
        spike = i % 1500 >= 1490
        mon.step(torch.tensor(5.0 if spike else 1.0 + 0.01 * (i % 5)))
        if pause and i % 50 == 0:
            time.sleep(pause)
    if close:
        mon.close()
        return mon
    mon.event("checkpoint_saved", "the steps before it are sent with it")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        mon.stats["unacknowledged"] or int(mon.stats["acknowledged"]) < steps + 2
    ):
        time.sleep(0.05)  # the JobStart, the steps, the event
    return mon
