"""The monitor never changes the run it watches: a seeded run with edgewatch attached
(sharpness and critical sharpness on, the probe in train() mode with dropout) is bitwise
the run without it; and no training step waits for more than one slice of curvature work."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

import edgewatch
from edgewatch.client.pacing import MAX_SLICE_HVPS
from edgewatch.server import Daemon

STEPS = 200


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(16, 32),
            torch.nn.BatchNorm1d(32),
            torch.nn.GELU(),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(32, 4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


def _run(endpoint: str | None) -> dict[str, Any]:
    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    model = _Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    xp, yp = torch.randn(32, 16), torch.randn(32, 4)  # the probe's fixed batch

    def probe() -> torch.Tensor:  # train() mode: dropout draws from the global RNG
        return torch.nn.functional.mse_loss(model(xp), yp)

    mon = None
    if endpoint is not None:
        mon = edgewatch.attach(
            optimizer,
            model=model,
            job="same-run",
            endpoint=endpoint,
            probe=probe,
            budget=0.5,
            critical_sharpness=True,  # its line search must leave no trace either
        )
    losses = []
    for _ in range(STEPS):
        # The loop draws its batch from all three global generators, as scripts do.
        i = torch.randint(0, 1000, (1,)).item() + random.randrange(10) + int(np.random.randint(10))
        x = torch.randn(64, 16, generator=torch.Generator().manual_seed(i))
        y = x[:, :4].sin()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if mon is not None:
            mon.step(loss)
        optimizer.zero_grad()
        losses.append(loss.item())
    estimates = 0
    if mon is not None:
        assert mon.curvature is not None
        estimates = mon.curvature.estimates + mon.curvature.critical.searches
        mon.close()
    return {
        "losses": losses,
        "params": [p.detach().clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state()[1].copy(),
        "estimates": estimates,
    }


def test_a_seeded_run_is_bitwise_the_same_with_and_without_edgewatch(daemon: Daemon) -> None:
    watched = _run(daemon.endpoint)
    alone = _run(None)
    assert watched["estimates"] >= 5  # curvature work did happen, many times
    assert watched["losses"] == alone["losses"]  # exact floats, every step
    assert all(torch.equal(a, b) for a, b in zip(watched["params"], alone["params"], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(watched["buffers"], alone["buffers"], strict=True))
    assert torch.equal(watched["torch"], alone["torch"])
    assert watched["python"] == alone["python"]
    assert np.array_equal(watched["numpy"], alone["numpy"])


def test_no_step_waits_for_more_than_one_slice_of_curvature_work(daemon: Daemon) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(128, 16), torch.randn(128, 1)
    calls = [0]

    def probe() -> torch.Tensor:
        calls[0] += 1
        return torch.nn.functional.mse_loss(model(x), y)

    with edgewatch.attach(
        optimizer,
        model=model,
        job="sliced",
        endpoint=daemon.endpoint,
        probe=probe,
        budget=0.5,
        critical_sharpness=True,
    ) as mon:
        assert mon.curvature is not None
        tracker = mon.curvature.tracker
        per_step = []
        for _ in range(300):
            before_hvps, before_calls = tracker.hvps_total, calls[0]
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            mon.step(loss)
            optimizer.zero_grad()
            tracker = mon.curvature.tracker
            per_step.append((tracker.hvps_total - before_hvps, calls[0] - before_calls))
    assert mon.curvature.estimates >= 3
    # A slice: one probe graph and at most hvps_per_step HVPs, plus one along the update
    # when it finishes an estimate; a critical-sharpness search: a handful of forwards.
    # The run's first slice, priced as it runs, may go on to MAX_SLICE_HVPS: once.
    begun = next(i for i, (h, _) in enumerate(per_step) if h > 0)  # once steps are timed
    assert 2 < per_step[begun][0] <= MAX_SLICE_HVPS
    assert max(h for h, _ in per_step[begun + 1 :]) <= tracker.hvps_per_step + 1
    assert max(c for _, c in per_step) <= 5
    cold = next(i for i, (h, _) in enumerate(per_step) if i > begun and h == 0) - begun
    assert cold > 3  # the first, cold estimate was spread over several steps
