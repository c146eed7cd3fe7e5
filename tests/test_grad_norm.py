"""The gradient norm edgewatch stores is the one backward produced: before clipping, per
optimizer step under gradient accumulation, in a loop written the way users write them."""

from __future__ import annotations

import pytest
import torch

import edgewatch
from edgewatch.server import Daemon


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _stored_norms(daemon: Daemon, job: str) -> list[float | None]:
    state = daemon.jobs.get(job)
    assert state is not None
    return [s["grad_norm"] for s in daemon.store.steps(state.pk)]


def test_a_loop_that_clips_at_one_stores_the_norm_before_clipping(daemon: Daemon) -> None:
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 8), 10 * torch.randn(32, 1)  # large targets: norms well above 1
    returned = []
    with edgewatch.attach(optimizer, model=model, job="clipping", endpoint=daemon.endpoint) as mon:
        for _ in range(30):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            returned.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
            optimizer.step()
            mon.step(loss)
            optimizer.zero_grad()
    stored = _stored_norms(daemon, "clipping")
    assert min(returned) > 1.5  # clipping bit at every step
    assert stored == pytest.approx(returned, rel=1e-5)  # clip_grad_norm_ returns the pre-clip norm


def test_under_gradient_accumulation_each_optimizer_step_gets_the_accumulated_norm(
    daemon: Daemon,
) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    micro = 4
    expected = []
    with edgewatch.attach(optimizer, model=model, job="accum", endpoint=daemon.endpoint) as mon:
        for step in range(12):
            for k in range(micro):
                xb = torch.randn(8, 8, generator=torch.Generator().manual_seed(step * 10 + k))
                loss = model(xb).pow(2).mean() / micro  # nanoGPT divides by the micro-steps
                loss.backward()  # type: ignore[no-untyped-call]
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            expected.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)  # rewrites the gradients
            optimizer.step()
            mon.step(loss * micro)
            optimizer.zero_grad()
    assert _stored_norms(daemon, "accum") == pytest.approx(expected, rel=1e-5)


def test_a_step_after_fewer_micro_batches_than_usual_stores_no_norm_rather_than_a_wrong_one(
    daemon: Daemon,
) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    plan = [3, 3, 3, 1, 3]  # an epoch's last, shorter accumulation at step 3
    with edgewatch.attach(optimizer, model=model, job="short", endpoint=daemon.endpoint) as mon:
        for passes in plan:
            for _ in range(passes):
                model(torch.randn(4, 8)).pow(2).mean().backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-6)
            optimizer.step()
            mon.step(1.0)
            optimizer.zero_grad()
    stored = _stored_norms(daemon, "short")
    assert stored[3] is None
    assert all(n is not None and n > 1e-3 for i, n in enumerate(stored) if i != 3)
