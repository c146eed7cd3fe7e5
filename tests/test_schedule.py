"""The planned LR: torch schedulers looked ahead on a copy, without being disturbed."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import transformers
from torch.optim import lr_scheduler as sched

import edgewatch
from edgewatch.client.schedule import PlanSource
from edgewatch.monitor import compress
from edgewatch.server import Daemon
from edgewatch_testkit.net import http_json

SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "sequential": lambda o: sched.SequentialLR(
        o, [sched.LinearLR(o, 0.01, 1.0, 100), sched.CosineAnnealingLR(o, 900)], [100]
    ),
    "one_cycle": lambda o: sched.OneCycleLR(o, max_lr=1e-2, total_steps=1000),
    "warm_restarts": lambda o: sched.CosineAnnealingWarmRestarts(o, 200),
    "lambda": lambda o: sched.LambdaLR(o, lambda s: min(1.0, (s + 1) / 50)),
    "multistep_jump": lambda o: sched.MultiStepLR(o, [300, 600], gamma=3.0),
    "chained": lambda o: sched.ChainedScheduler(
        [sched.ConstantLR(o, 0.5, 50), sched.ExponentialLR(o, 0.999)]
    ),
    "hf_cosine_warmup": lambda o: transformers.get_cosine_schedule_with_warmup(o, 100, 1000),
    "hf_warmup_stable_decay": lambda o: transformers.get_wsd_schedule(
        o, 100, 200, num_stable_steps=500
    ),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_the_lookahead_is_the_schedule_and_leaves_it_alone(name: str) -> None:
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = SCHEDULERS[name](optimizer)
    for _ in range(37):
        optimizer.step()
        scheduler.step()
    before = (str(scheduler.state_dict()), str(optimizer.state_dict()["param_groups"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stepping the copy must not warn either
        planned = PlanSource(scheduler, optimizer).snapshot(37).lrs(800)
    assert (str(scheduler.state_dict()), str(optimizer.state_dict()["param_groups"])) == before
    actual = []
    for _ in range(800):
        actual.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert planned == pytest.approx(actual, rel=1e-12)
    plan = compress(37, planned)
    assert [plan.at(37 + i) for i in range(800)] == pytest.approx(actual, rel=1.01e-3)


def test_a_function_is_a_schedule_too() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    planned = PlanSource(lambda step: 0.1 * (step + 1), optimizer).snapshot(10).lrs(5)
    assert planned == pytest.approx([1.1, 1.2, 1.3, 1.4, 1.5])


def nanogpt_get_lr(it: int) -> float:
    """A get_lr in nanoGPT's style for a 120-step run, without nanoGPT's guard for
    it > lr_decay_iters: it divides by zero at 120 and fails its assert after."""
    warmup_iters, lr_decay_iters, learning_rate, min_lr = 10, 120, 1e-3, 1e-4
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr) + 0 / (lr_decay_iters - it)


def test_a_schedule_that_raises_past_the_run_plans_up_to_it(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    with edgewatch.attach(
        optimizer, job="nanogpt-lr", endpoint=daemon.endpoint, scheduler=nanogpt_get_lr
    ) as mon:
        for it in range(100):
            for group in optimizer.param_groups:
                group["lr"] = nanogpt_get_lr(it)
            param.grad = torch.ones(2)
            optimizer.step()
            mon.step(1.0)
            time.sleep(0.002)
    warnings = [r.getMessage() for r in caplog.records if "LR schedule" in r.getMessage()]
    assert len(warnings) == 1, warnings  # said once, not at every replan
    assert "function nanogpt_get_lr" in warnings[0] and "ZeroDivisionError" in warnings[0]
    assert "ends at step 119" in warnings[0]
    job = http_json(daemon.http_url + "/api/jobs/nanogpt-lr")
    assert job["analysis"]["planned_lr"] is True
    plans = [
        row[1]
        for row in daemon.store.run_records(job_pk(daemon, "nanogpt-lr"), job["run"])
        if row[0] == "plans"
    ]
    assert len(plans) == 1  # the plan reaches the run's end: nothing to plan again


def test_reduce_on_plateau_has_no_plan_and_a_wrong_type_is_refused() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert PlanSource.create(sched.ReduceLROnPlateau(optimizer), optimizer) is None
    with pytest.raises(TypeError, match="scheduler must be"):
        edgewatch.attach(optimizer, job="x", scheduler="cosine", endpoint="tcp://127.0.0.1:1")


def test_the_daemon_gets_the_plan_and_a_new_one_when_the_lr_leaves_it(daemon: Daemon) -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = sched.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 100))
    with edgewatch.attach(
        optimizer, job="planned", endpoint=daemon.endpoint, scheduler=scheduler, close_timeout=10
    ) as mon:
        for step in range(300):
            param.grad = torch.ones(2)
            optimizer.step()
            scheduler.step()
            if step == 150:
                scheduler.base_lrs = [0.01]  # by hand: the LR leaves the plan from here
            mon.step(1.0)
            time.sleep(0.003)  # a step's worth of time: the sender sees chunks as they come
    job = http_json(daemon.http_url + "/api/jobs/planned")
    assert job["analysis"]["planned_lr"] is True
    plans = [
        row
        for row in daemon.store.run_records(job_pk(daemon, "planned"), job["run"])
        if row[0] == "plans"
    ]
    assert len(plans) == 2  # at the first step, and after the LR left the plan
    assert plans[1][1]["step"] > 150


def job_pk(daemon: Daemon, job_id: str) -> int:
    return next(row["pk"] for row in daemon.store.jobs() if row["job_id"] == job_id)
