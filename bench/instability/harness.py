"""Train one run of a family once, watched by one edgewatch monitor per budget.

edgewatch never changes the run it watches, so one training run serves every budget:
each monitor is attached to the same optimizer (its own job, ``{spec.job}@{budget}``),
and the loop is the README's: ``loss.backward()``; clip if any; ``optimizer.step()``;
``scheduler.step()``; ``mon.step(loss)``; ``optimizer.zero_grad()``.

The curvature clock. A monitor's budget is a share of the run's time; on a wall clock
the schedule (which steps get an estimate) would depend on the machine's speed and its
load, and so would every score (bench/RESULTS.md: figures moved between two machines).
So each monitor is lent a clock (``CurvatureSchedule.use_clock``) that counts the run's
time in units of its own median training step: every step advances it by the median of
the run's step times so far (the step proper, from its batch to ``scheduler.step()``,
measured here), and the monitor's own curvature work advances it by its seconds. What a
measurement costs is then charged in step times: an HVP costs about the same number of
training steps on any machine, so two machines give (nearly) the same schedule. The
label loss this harness evaluates before every step, the other monitors' curvature and
the monitors' per-step overhead are no part of the run's time. A client that counts its
budget in step times itself (``client/pacing.py``'s StepClock, measuring the intervals
of this clock less its own curvature work) reads the same unit from this clock.

The harness records its own truth beside what edgewatch stores: the LR in force, the
training loss and the gradient norm BEFORE clipping (to check the client's), per step.
A run stops early, its jobs ending as ``failed``, where it will not come back: when its
label loss turns non-finite or exceeds DIVERGED × its first value (as in the v1 zoo), or
has stayed at 10× its best or more for STALLED steps (cross-entropy losses never reach
DIVERGED × their first value; bench/instability/scoring.py labels such a run a DIVERGENCE
either way, since it has not recovered when the trace ends).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

import edgewatch
from bench.instability.families import RunSpec, build

DIVERGED = 1e4
STALLED = 100
LROverride = Callable[[int, float], float]


@dataclasses.dataclass
class RunResult:
    spec: RunSpec
    label_loss: list[float]  # before each step (the parameters that step starts from)
    lr: list[float]  # in force at each step
    train_loss: list[float]
    grad_norm: list[float]  # the harness's own, before clipping
    seconds: float  # the training loop's wall time, everything included
    label_seconds: float  # of which, evaluating the label loss
    jobs: dict[str, str]  # budget -> edgewatch job name
    monitors: dict[str, dict[str, int]]  # budget -> mon.stats after close
    curvature_seconds: dict[str, float]  # budget -> that monitor's curvature seconds
    stopped_early: bool  # the label loss diverged and the run was stopped
    median_step: float = 0.0  # the run's median step seconds (the curvature clock's unit)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> RunResult:
        """The inverse of ``dataclasses.asdict`` after a JSON round trip."""
        return cls(**{**saved, "spec": RunSpec.from_dict(saved["spec"])})


def budget_key(budget: float) -> str:
    return f"{budget:g}"


def run(
    spec: RunSpec,
    endpoint: str | None,
    budgets: Sequence[float] = (0.02, 0.2),
    lr_override: LROverride | None = None,
    job_suffix: str = "",
    on_step: Callable[[int], None] | None = None,
) -> RunResult:
    """Train ``spec`` once with a monitor per budget (none when ``budgets`` is empty,
    e.g. to calibrate labels without a daemon).

    ``lr_override(step, planned_lr) -> lr`` replaces the plan (interventions); it is
    called through the scheduler, so edgewatch's look-ahead calls it for future steps
    too: it must be a function of its arguments (and of state fixed before the step).
    ``on_step(step)`` runs before each step: where such state may change (an
    intervention that asks the daemon whether the sharpness allows the plan again).
    """
    torch.set_num_threads(1)  # the daemon has the other core
    setup = build(spec)
    optimizer, model = setup.optimizer, setup.model

    def in_force(step: int) -> float:
        planned = setup.planned_lr(step)
        return planned if lr_override is None else lr_override(step, planned)

    # LambdaLR multiplies each group's initial LR by the lambda: from 1.0, it is the LR.
    for group in optimizer.param_groups:
        group["lr"] = 1.0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, in_force)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    result = RunResult(spec, [], [], [], [], 0.0, 0.0, {}, {}, {}, False)
    label_time = [0.0]
    with contextlib.ExitStack() as stack:
        monitors: dict[str, edgewatch.Monitor] = {}
        for budget in budgets:
            key = budget_key(budget)
            job = f"{spec.job}@{key}{job_suffix}"
            assert endpoint is not None, "monitors need a daemon endpoint"
            mon = edgewatch.attach(
                optimizer,
                model=model,
                job=job,
                endpoint=endpoint,
                probe=setup.probe,
                scheduler=scheduler,
                total_steps=spec.steps,
                budget=budget,
                close_timeout=10.0,
                probe_batch=setup.probe_batch,
                step_signals=True,  # every candidate signal is recorded, to be measured
            )
            stack.enter_context(mon)
            monitors[key], result.jobs[key] = mon, job
        run_clock = RunClock()
        for mon in monitors.values():
            if mon.curvature is not None:
                mon.curvature.use_clock(run_clock.lend(mon))
        started = time.monotonic()
        first, best, high = None, math.inf, 0
        for step in range(spec.steps):
            if on_step is not None:
                on_step(step)
            t0 = time.monotonic()
            label = setup.label_loss()
            label_time[0] += time.monotonic() - t0
            first = label if first is None else first
            result.label_loss.append(label)
            result.lr.append(float(optimizer.param_groups[0]["lr"]))
            t0 = time.perf_counter()
            loss = setup.loss(setup.batch(step))
            loss.backward()  # type: ignore[no-untyped-call]
            grad_norm = _pre_clip_norm(params, setup.clip)
            optimizer.step()
            scheduler.step()
            run_clock.step_done(time.perf_counter() - t0)
            result.grad_norm.append(grad_norm)
            for mon in monitors.values():
                mon.step(loss)
            optimizer.zero_grad()
            result.train_loss.append(float(loss.item()))
            best = min(best, label)
            high = high + 1 if label >= 10 * best else 0
            if not math.isfinite(label) or label > DIVERGED * first or high >= STALLED:
                result.stopped_early = True
                break
        result.seconds = time.monotonic() - started
        result.label_seconds = label_time[0]
        result.median_step = run_clock.median_step
        _close_all(list(monitors.values()), "failed" if result.stopped_early else "finished")
    for key, mon in monitors.items():
        result.monitors[key] = dict(mon.stats)
        result.curvature_seconds[key] = mon.curvature.spent if mon.curvature else 0.0
    return result


def _close_all(monitors: list[edgewatch.Monitor], status: str) -> None:
    """Close the monitors side by side: each waits for its daemon's acknowledgements,
    and one after another they would add those waits up in every run."""
    threads = [threading.Thread(target=mon.close, args=(status,)) for mon in monitors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _pre_clip_norm(params: list[torch.Tensor], clip: float | None) -> float:
    """The global gradient norm before clipping; clips in place when ``clip`` is set."""
    grads = [p for p in params if p.grad is not None]
    if clip is not None:
        return float(torch.nn.utils.clip_grad_norm_(grads, clip))
    return float(torch.nn.utils.get_total_norm([p.grad for p in grads]))


class RunClock:
    """The run's own time in units of its median training step (the module docstring):
    each step advances it by the median of the step times so far; a monitor's lent
    clock adds that monitor's own curvature seconds."""

    def __init__(self) -> None:
        self.step_seconds: list[float] = []  # sorted
        self.now = 0.0

    def step_done(self, seconds: float) -> None:
        bisect.insort(self.step_seconds, seconds)
        self.now += self.median_step

    @property
    def median_step(self) -> float:
        times, n = self.step_seconds, len(self.step_seconds)
        if n == 0:
            return 0.0
        return times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])

    def lend(self, mon: edgewatch.Monitor) -> Callable[[], float]:
        curvature = mon.curvature

        def clock() -> float:
            return self.now + (curvature.spent if curvature is not None else 0.0)

        return clock
