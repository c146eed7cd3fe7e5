"""Steps fed in blocks give what they give one at a time: the same alerts at the same
steps, and the same state to the last bit (the daemon feeds blocks, replay one by one)."""

from __future__ import annotations

import dataclasses
import math
import random
import time

import pytest
import zmq

from edgewatch.monitor import JobForecast, compress
from edgewatch.monitor.forecast import PredictorSettings
from edgewatch.schemas import AnyRecord, Batch, JobStart, OptimizerInfo, Step, encode
from edgewatch.server import Daemon
from edgewatch_testkit.net import http_json

ON = PredictorSettings(
    grad_excursion=2.0, update_excursion=2.5, moment_excursion=3.0, recover_steps=30
)


@dataclasses.dataclass
class _Step:
    step: int
    lr: float
    loss: float | None
    grad_norm: float | None
    update_norm: float | None = None
    moment_ratio: float | None = None


def _trace(seed: int, adam: bool) -> tuple[list[_Step], dict[int, float]]:
    """A noisy run with spikes, a jump in the LR and, once, a resent step."""
    rng = random.Random(seed)
    lrs = [0.05 * min(1.0, (t + 1) / 200) * (3.0 if t >= 1500 else 1.0) for t in range(3000)]
    steps, loss, sharp = [], 3.0, {}
    for t, lr in enumerate(lrs):
        loss = max(0.05, loss * (1 - 1e-3) + rng.gauss(0, 0.02))
        spike = 4.0 if t % 700 in range(400, 412) else 1.0
        grad = abs(rng.gauss(1, 0.2)) * (3.0 if t % 900 in range(300, 320) else 1.0)
        update = 0.01 * abs(rng.gauss(1, 0.1)) * (4.0 if t % 800 in range(555, 560) else 1.0)
        moment = abs(rng.gauss(1, 0.1)) * (6.0 if t % 650 in range(100, 104) else 1.0)
        steps.append(_Step(t, lr, loss * spike, grad, update, moment if adam else None))
        if t % 37 == 0:
            sharp[t] = 30.0 * (1 + 0.3 * math.sin(t / 300))
    steps.insert(1200, dataclasses.replace(steps[1100]))  # a resend
    return steps, sharp


def _feed(
    forecast: JobForecast,
    steps: list[_Step],
    sharp: dict[int, float],
    blocks: bool,
    rng: random.Random,
) -> None:
    plan = compress(0, [s.lr for s in steps if s.step >= 0][:3000])
    forecast.observe_plan(0, plan)
    i = 0
    while i < len(steps):
        if blocks:
            n = rng.choice([1, 5, 16, 64, 300, 1000])
            chunk = steps[i : i + n]
            # A sharpness estimate follows its step, as on the wire: the block ends there.
            cut = next((k for k, s in enumerate(chunk) if s.step in sharp), len(chunk) - 1)
            chunk = chunk[: cut + 1]
            forecast.observe_steps(chunk)
        else:
            chunk = steps[i : i + 1]
            s = chunk[0]
            forecast.observe_step(s.step, s.lr, s.loss, s.grad_norm, s.update_norm, s.moment_ratio)
        last = chunk[-1]
        if last.step in sharp:
            forecast.observe_sharpness(last.step, sharp[last.step], last.lr)
        i += len(chunk)


def _state(f: JobForecast) -> tuple[object, ...]:
    p = [(e.short, e.base, e.seen, e.over) for e in f.precursors.values()]
    h = f.loss
    return (
        f.state,
        f.step,
        f.lr,
        f.quiet,
        h.short,
        h.mean,
        h.spread,
        h.last,
        h.floor,
        tuple(p),
        tuple(f.recent_lrs),
        f.nearest,
        f.recommendation,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("adam", [False, True])
def test_blocks_and_single_steps_give_the_same_alerts_and_state(seed: int, adam: bool) -> None:
    steps, sharp = _trace(seed, adam)
    kind = (
        {"kind": "AdamW", "lr": 0.05, "betas": (0.9, 0.95)} if adam else {"kind": "SGD", "lr": 0.05}
    )
    one, many = JobForecast(kind, ON, 3000), JobForecast(kind, ON, 3000)
    _feed(one, steps, sharp, blocks=False, rng=random.Random(seed))
    _feed(many, steps, sharp, blocks=True, rng=random.Random(seed))
    assert len(one.alerts) >= 4  # the trace does raise alarms and recoveries
    assert many.alerts == one.alerts
    assert _state(many) == _state(one)


def test_a_non_finite_loss_inside_a_block_is_diverged_at_its_step() -> None:
    steps = [_Step(t, 0.1, 1.0 if t != 150 else math.nan, 1.0) for t in range(300)]
    forecast = JobForecast({"kind": "SGD", "lr": 0.1})
    forecast.observe_steps(steps)
    assert [(a.step, a.state) for a in forecast.alerts] == [(150, "diverged")]


def test_several_alerts_raised_by_one_frame_are_all_stored(daemon: Daemon) -> None:
    # One frame whose steps spike and recover, twice: four state changes in one block.
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(daemon.endpoint)
    optimizer = OptimizerInfo(kind="SGD", lr=0.1)
    start = JobStart(job="burst", run=1, seq=1, wall_time=time.time(), optimizer=optimizer)
    sock.send(encode(Batch(job="burst", run=1, frame_id=1, records=[start])))
    sock.recv()
    losses = [1.0] * 100 + [5.0] * 10 + [1.0] * 100 + [5.0] * 10 + [1.0] * 100
    steps: list[AnyRecord] = [
        Step(
            job="burst",
            run=1,
            seq=2 + t,
            step=t,
            wall_time=time.time(),
            lr=0.1,
            loss=v,
            grad_norm=1.0,
        )
        for t, v in enumerate(losses)
    ]
    sock.send(encode(Batch(job="burst", run=1, frame_id=2, records=steps)))
    sock.recv()
    sock.close(linger=0)
    alerts = http_json(daemon.http_url + "/api/jobs/burst/alerts")
    assert [a["state"] for a in alerts] == ["unstable", "stable", "unstable", "stable"]
