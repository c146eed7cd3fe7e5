"""The GPU hot path adds no host-device synchronisation. Runs only where CUDA is present."""

from __future__ import annotations

import pytest
import torch

import edgewatch
from edgewatch.server import Daemon

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_monitored_steps_issue_no_sync(daemon: Daemon) -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)
    ).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 64, device="cuda"), torch.randn(32, 1, device="cuda")
    mon = edgewatch.attach(optimizer, model=model, job="gpu", endpoint=daemon.endpoint)
    for _ in range(5):  # warm-up: allocations, cuBLAS handles
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        mon.step(loss)
        optimizer.zero_grad()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(200):  # crosses several chunk shipments (64 steps each)
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            mon.step(loss)
            optimizer.zero_grad()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    mon.close()
    assert mon.stats["errors"] == 0
    job = daemon.jobs.get("gpu")
    assert job is not None and job.records == 205
    assert all(
        s["grad_norm"] is not None and s["loss"] is not None for s in daemon.store.steps(job.pk)
    )
