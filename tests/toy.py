"""A training loop whose every per-step value is known in advance, for exact checks."""

from __future__ import annotations

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
