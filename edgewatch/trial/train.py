"""One trial: a deep copy of the model and optimizer trained over a grid of the plan.

The user's model, optimizer, scheduler and every global RNG state are left as they were
(``monitor/isolation.py``): the copy is made with one ``copy.deepcopy`` of (model,
optimizer), so the copied optimizer steps the copied parameters; the scheduler is never
stepped (the plan is read ahead on a private copy, ``client/schedule.py``); the global
RNG states of torch, Python and NumPy are put back afterwards, whatever the user's loss
or batches drew. Because the model trained is a copy, the probe and the loss take the
model as an argument: a closure over the user's model would measure the wrong one.

Along the way: the probe loss each step (the trial's health, as bench/instability/scoring.py labels
runs: against its running minimum), and the sharpness every few steps, warm-started
(``edgewatch.monitor.sharpness``; λ_max(P⁻¹H) for Adam-type optimizers, Cohen et al.
2022, arXiv 2207.14484).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from edgewatch.monitor.curvature import sharpness
from edgewatch.monitor.eigen import NotConvergedWarning
from edgewatch.monitor.isolation import private_generator, rng_preserved

ModelLoss = Callable[[torch.nn.Module], torch.Tensor]
BatchLoss = Callable[[torch.nn.Module, Any], torch.Tensor]
RUNAWAY = 1e3  # a probe loss this many times its first value: the trial stops there
ESTIMATES = 40  # sharpness estimates per trial, spread evenly


@dataclasses.dataclass
class Estimate:
    trial_step: int
    plan_step: int
    lr: float
    value: float
    matvecs: int
    converged: bool = True


@dataclasses.dataclass
class Trace:
    """What one trial saw, per trial step (after that step's update)."""

    plan_steps: list[int] = dataclasses.field(default_factory=list)
    lrs: list[float] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)
    """The probe loss before each step's update."""
    estimates: list[Estimate] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    truncated: bool = False
    """Stopped by the time budget before the grid's end."""
    stopped: bool = False
    """Stopped because the loss ran away (non-finite or RUNAWAY × its first value)."""
    twin: tuple[torch.nn.Module, torch.optim.Optimizer] | None = dataclasses.field(
        default=None, repr=False
    )
    """The trained copy (model, optimizer), for measurements after the trial."""


class BatchSource:
    """``batches`` as the trials read them: a zero-argument callable (called per step), a
    re-iterable (a list, a DataLoader: iterated afresh, from its start, by each trial), or
    a one-shot iterator (each trial reads on where the last stopped)."""

    def __init__(self, batches: Callable[[], Any] | Iterable[Any]) -> None:
        self.batches = batches
        self._shared: Iterator[Any] | None = None

    def reader(self) -> Callable[[], Any]:
        b = self.batches
        if callable(b) and not hasattr(b, "__iter__"):
            return b
        if not isinstance(b, Iterable):
            raise TypeError(f"batches must be iterable or callable, got {type(b).__name__}")
        if iter(b) is b:  # an iterator: one stream for every trial
            self._shared = self._shared or iter(b)
            it = self._shared
        else:
            it = iter(b)
        state = {"it": it}

        def read() -> Any:
            try:
                return next(state["it"])
            except StopIteration:  # a short dataset: go round again
                if self._shared is not None:
                    raise ValueError("batches ran out during the pre-flight") from None
                state["it"] = iter(b)
                return next(state["it"])

        return read


def run_trial(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    probe: ModelLoss,
    loss: BatchLoss,
    batches: BatchSource,
    plan_steps: list[int],
    lrs: list[float],
    *,
    deadline: float,
    clip: float | None = None,
    label: str = "trial",
) -> Trace:
    """Train a copy through ``lrs`` (group 0's LR; the other groups keep their ratio to
    it), measuring as it goes; stops at ``deadline`` (time.monotonic) or a runaway loss."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    with rng_preserved(params):
        twin, opt = copy.deepcopy((model, optimizer))
        read = batches.reader()
        trace = _train(twin, opt, probe, loss, read, plan_steps, lrs, deadline, clip, label)
    trace.twin = (twin, opt)
    return trace


def _train(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    probe: ModelLoss,
    loss_fn: BatchLoss,
    read: Callable[[], Any],
    plan_steps: list[int],
    lrs: list[float],
    deadline: float,
    clip: float | None,
    label: str,
) -> Trace:
    trace, started = Trace(), time.monotonic()
    base = float(opt.param_groups[0]["lr"]) or 1.0
    ratios = [float(g["lr"]) / base for g in opt.param_groups]
    every = max(1, len(lrs) // ESTIMATES)
    generator = private_generator(0)
    vector, gap, first = None, None, math.nan
    progress = Progress(label, len(lrs))
    for i, (step, lr) in enumerate(zip(plan_steps, lrs, strict=True)):
        if time.monotonic() > deadline:
            trace.truncated = True
            break
        with torch.no_grad():
            value = float(probe(model))
        first = value if i == 0 else first
        trace.plan_steps.append(step)
        trace.lrs.append(lr)
        trace.losses.append(value)
        if not math.isfinite(value) or value > RUNAWAY * abs(first):
            trace.stopped = True
            break
        if i % every == 0 or i == len(lrs) - 1:
            with warnings.catch_warnings():  # non-convergence is kept as data, per estimate
                warnings.simplefilter("ignore", NotConvergedWarning)
                est = sharpness(
                    model, lambda: probe(model), opt, vector, tol=2e-2, max_iter=20,
                    generator=generator, gap=gap,
                )  # fmt: skip
            vector, gap = est.vector, est.gap
            trace.estimates.append(Estimate(i, step, lr, est.value, est.matvecs, est.converged))
        for group, ratio in zip(opt.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
        opt.zero_grad(set_to_none=True)
        loss_fn(model, read()).backward()  # type: ignore[no-untyped-call]
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        progress.update(i + 1, step, lr, value)
    trace.seconds = time.monotonic() - started
    progress.done()
    return trace


class Progress:
    """A line on stderr every tenth of the trial, only when stderr is a terminal."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.shown = label, total, 0
        self.on = sys.stderr.isatty()

    def update(self, done: int, step: int, lr: float, loss: float) -> None:
        if self.on and done * 10 // self.total > self.shown:
            self.shown = done * 10 // self.total
            print(
                f"\rpreflight {self.label}: {done}/{self.total} (plan step {step}, "
                f"lr {lr:.3g}, loss {loss:.4g})   ",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def done(self) -> None:
        if self.on:
            print(file=sys.stderr)
