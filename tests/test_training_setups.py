"""Mixed precision and data parallelism: what the client records in each."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import edgewatch
from edgewatch.server import Daemon
from edgewatch_testkit.net import free_port


def test_amp_skipped_steps_are_events_with_the_loss_scale_and_true_grad_norms(
    daemon: Daemon,
) -> None:
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.SGD([param], lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    with edgewatch.attach(
        optimizer, job="amp", endpoint=daemon.endpoint, grad_scaler=scaler
    ) as mon:
        for step in range(12):
            poison = float("inf") if step in (4, 9) else 1.0  # overflowing gradients
            loss = (param * 3.0 * poison).sum()
            scaler.scale(loss).backward()
            scaler.step(optimizer)  # skipped when the gradients are not finite
            scaler.update()
            mon.step(loss.detach().clamp(max=1e6))
            optimizer.zero_grad()
    job = daemon.jobs.get("amp")
    assert job is not None
    steps = daemon.store.steps(job.pk)
    assert [s["step"] for s in steps] == list(range(12))
    for s in steps:
        if s["step"] in (4, 9):
            assert s["grad_norm"] is None  # no optimizer step, no gradient norm: not a NaN
        else:
            assert s["grad_norm"] == pytest.approx(6.0)  # ‖(3,3,3,3)‖, unscaled
    scales = [s["loss_scale"] for s in steps]
    assert scales[3] == 1024.0 and scales[4] == 512.0 and scales[9] == 256.0  # halved on skips
    with daemon.store.engine.connect() as conn:
        from sqlalchemy import text

        events = conn.execute(text("SELECT step, kind FROM events ORDER BY step")).all()
    assert [tuple(e) for e in events] == [(4, "skipped_step"), (9, "skipped_step")]


STEPS = 80  # enough for the first sharpness estimate's budget to accrue


def _ddp_rank(rank: int, world: int, port: int, endpoint: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(rank)  # each rank sees different data
    norms = []
    probe_x = torch.randn(16, 4, generator=torch.Generator().manual_seed(99))
    with edgewatch.attach(
        optimizer,
        model=model,
        job="ddp",
        endpoint=endpoint,
        budget=0.9,
        probe=lambda: model.module(probe_x).pow(2).mean(),
    ) as mon:
        for _ in range(STEPS):
            loss = model(torch.randn(8, 4, generator=data)).pow(2).mean()
            loss.backward()  # DDP averages the gradients over the ranks here
            norms.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters())))
            optimizer.step()
            mon.step(loss)
            optimizer.zero_grad()
    # λ_max estimates, and the critical-sharpness searches that found a step (each a record)
    estimates = mon.curvature.estimates if mon.curvature else 0
    sent = 0
    if mon.curvature is not None:
        sent = estimates + mon.curvature.critical.found
    Path(out, f"rank{rank}.json").write_text(
        json.dumps({"norms": norms, "enabled": mon.enabled, "estimates": estimates, "sent": sent})
    )
    # Both ranks tear gloo down together: a rank that destroyed its group while the other
    # still used the store was once aborted by gloo ("terminate called without an active
    # exception", SIGABRT) in a full-suite run.
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_under_ddp_only_rank_zero_reports_the_global_gradient_norm(
    daemon: Daemon, tmp_path: Path
) -> None:
    mp.spawn(_ddp_rank, args=(2, free_port(), daemon.endpoint, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["enabled"] for r in ranks] == [True, False]
    assert ranks[0]["norms"] == pytest.approx(ranks[1]["norms"])  # averaged: the same everywhere
    job = daemon.jobs.get("ddp")
    assert job is not None and job.world_size == 2
    assert ranks[0]["estimates"] >= 1 and ranks[1]["estimates"] == 0  # curvature on rank 0 only
    assert job.records == STEPS + ranks[0]["sent"]  # steps and curvature records
    assert job.sharpness is not None and job.sharpness > 0
    stored = [s["grad_norm"] for s in daemon.store.steps(job.pk)]
    assert stored == pytest.approx(ranks[0]["norms"], rel=1e-5)
    assert len(daemon.jobs.snapshot()) == 1  # rank 1 sent nothing
