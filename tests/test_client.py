"""The training side: never blocks, never raises, bounded, and says what it could not do."""

from __future__ import annotations

import logging
import time

import pytest
import torch
from conftest import metric

import edgewatch
from edgewatch.server import Daemon
from edgewatch_testkit.net import free_port
from edgewatch_testkit.toy import run_toy


def sgd() -> torch.optim.SGD:
    return torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=0.1)


def test_a_client_whose_server_never_existed_trains_and_closes_promptly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    mon = run_toy("orphan", endpoint, 2_000, close_timeout=30.0)
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"training plus close took {elapsed:.1f}s"
    stats = mon.stats
    assert stats["steps"] == 2_000 and stats["acknowledged"] == 0 and stats["errors"] == 0
    assert stats["unacknowledged"] > 0
    assert "not acknowledged" in caplog.text


def test_close_returns_quickly_without_a_server() -> None:
    mon = edgewatch.attach(sgd(), job="quick-close", endpoint=f"tcp://127.0.0.1:{free_port()}")
    mon.step(1.0)
    started = time.monotonic()
    mon.close(timeout=30.0)
    assert time.monotonic() - started < 3.0


def test_the_buffer_is_bounded_and_drops_are_counted() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    mon = run_toy("tiny-buffer", endpoint, 5_000, max_buffered=500, close_timeout=0.5)
    assert mon.stats["dropped"] >= 4_000
    assert mon.stats["unacknowledged"] <= 500 + 64 * 8  # buffer plus chunks in flight


def test_drops_reach_the_daemon_and_metrics(daemon: Daemon) -> None:
    param = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=0.1)
    mon = edgewatch.attach(optimizer, job="dropper", endpoint=daemon.endpoint, max_buffered=256)
    assert mon.sender is not None
    mon.sender.inbox.clear()
    for _ in range(mon.sender.max_inbox + 50):  # outrun the sender: the oldest chunks go
        mon.sender.put(mon.sender.inbox[-1] if mon.sender.inbox else _chunk(mon))
    for _ in range(100):
        param.grad = torch.ones(2)
        optimizer.step()
        mon.step(0.5)
    mon.close(timeout=10)
    assert mon.stats["dropped"] > 0
    assert (
        metric(daemon, "edgewatch_client_records_dropped_total", job_id="dropper")
        == mon.stats["dropped"]
    )


def _chunk(mon: edgewatch.Monitor) -> object:
    from edgewatch.client.readback import pack
    from edgewatch.client.sender import StepChunk

    rows = [(0, time.time(), [0.1], 1.0, 1.0, None)]
    return StepChunk(rows, pack(rows))


def test_mistakes_in_the_call_fail_before_training_starts() -> None:
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        edgewatch.attach(object(), job="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="printable name"):
        edgewatch.attach(sgd(), job="")
    with pytest.raises(ValueError, match="ZeroMQ endpoint"):
        edgewatch.attach(sgd(), job="x", endpoint="localhost:5555")
    with pytest.raises(ValueError, match="budget"):
        edgewatch.attach(sgd(), job="x", budget=1.5)


def test_nothing_edgewatch_does_wrong_reaches_the_training_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mon = edgewatch.attach(sgd(), job="robust", endpoint=f"tcp://127.0.0.1:{free_port()}")
    with caplog.at_level(logging.WARNING, logger="edgewatch.client"):
        for _ in range(3):
            mon.step("not a loss")  # type: ignore[arg-type]
            mon.step(torch.ones(3))  # not a scalar
    mon.close(timeout=0.5)
    assert mon.stats["errors"] == 6
    assert caplog.text.count("error in step") == 1  # logged once, counted always


def test_the_learning_rate_of_every_group_and_the_step_taken_are_recorded(daemon: Daemon) -> None:
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 5e-4}])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    with edgewatch.attach(
        optimizer, job="groups", endpoint=daemon.endpoint, scheduler=scheduler
    ) as mon:
        for _ in range(3):
            a.grad, b.grad = torch.full((2,), 3.0), torch.full((2,), 4.0)
            optimizer.step()
            scheduler.step()  # moves the LR on: the record must keep the LR the step used
            mon.step(torch.tensor(2.0))
            optimizer.zero_grad()
    steps = daemon.store.steps(daemon.jobs.get("groups").pk)  # type: ignore[union-attr]
    assert [s["lr"] for s in steps] == [1e-3, 5e-4, 2.5e-4]
    assert [s["group_lrs"] for s in steps] == [[1e-3, 5e-4], [5e-4, 2.5e-4], [2.5e-4, 1.25e-4]]
    assert all(s["grad_norm"] == pytest.approx(5.0 * 2**0.5) for s in steps)  # ‖(3,3,4,4)‖
    job = daemon.jobs.get("groups")
    assert job is not None and job.optimizer["kind"] == "AdamW"
    assert job.optimizer["betas"] == [0.9, 0.999] and job.optimizer["param_groups"] == 2


def test_only_rank_zero_reports_under_torchrun(
    monkeypatch: pytest.MonkeyPatch, daemon: Daemon
) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    mon = edgewatch.attach(sgd(), job="rank1", endpoint=daemon.endpoint)
    mon.step(1.0)
    mon.close()
    assert not mon.enabled and daemon.jobs.get("rank1") is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_gradient_norms_of_every_precision_and_of_mixed_ones(dtype: torch.dtype) -> None:
    from edgewatch.client.capture import global_grad_norm, single_group

    a = torch.zeros(3, dtype=dtype, requires_grad=True)
    b = torch.zeros(4, dtype=torch.float32, requires_grad=True)
    a.grad = torch.full((3,), 2.0, dtype=dtype)
    b.grad = torch.full((4,), 1.0)
    alone = global_grad_norm([a], single_group([a]))
    assert alone is not None and alone.item() == pytest.approx(12**0.5, rel=1e-2)
    mixed = global_grad_norm([a, b], single_group([a, b]))
    assert mixed is not None and mixed.item() == pytest.approx(16**0.5, rel=1e-2)
