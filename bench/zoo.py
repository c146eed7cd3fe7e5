"""The instability zoo: small real training runs that go stable, hover at the edge,
spike or diverge, each streamed through the real client to a real daemon.

Data: the first 512 of scikit-learn's bundled digits (8×8 images, no download), pixels
/ 16. Model: an MLP 64-64-64-10 with tanh and the squared loss on one-hot targets (as in
Cohen et al. 2021: cross-entropy on this net sharpened so fast that every LR from 0.6 η_c
up ended far above its best loss, which made a zoo of failures and nothing else). LRs for
the GD families are multiples of the critical LR at initialisation, η_c = 2/λ₀
(``edgewatch.find_lr``), as in the issue: η·λ₀/2 = x.

Families (every one on several seeds; the seed sets the initialisation and batches):
- gd_const: full-batch GD at x ∈ {0.3, 0.6, 1, 1.5, 2, 2.5, 5}: progressive sharpening,
  the edge of stability, catapults, divergence (Cohen et al. 2021; Kalra & Barkeshli 2024).
- gd_jump: x = 0.5 for 300 steps, then the scheduler multiplies it by J ∈ {2, 3, 4, 8}.
- gd_warmup: linear warmup to x ∈ {2, 3} over W ∈ {10, 50, 200, 500} steps.
- adam: full-batch Adam at η ∈ {1e-3, 1e-2, 3e-2, 0.1}, warmup 0 or 100 steps.
- sgd_mini: minibatch SGD (batch 64) at x ∈ {0.5, 1.5, 3}, and x = 0.5 jumping ×4 at 300.

The probe loss that labels the runs is the full-data loss before each step (for
full-batch runs, the training loss itself).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch

import edgewatch

torch.set_num_threads(1)  # the daemon has the other core

STEPS = 600
JUMP_AT = 300
DIVERGED = 1e4  # a probe loss this many times the initial one ends the run (it will not return)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    family: str
    name: str
    seed: int
    optimizer: str  # "gd", "adam", "sgd_mini"
    scale: float  # x (multiple of η_c) for GD/SGD; the LR itself for Adam
    warmup: int = 0
    jump: float = 1.0  # LR multiplier from JUMP_AT on
    steps: int = STEPS

    @property
    def job(self) -> str:
        return f"{self.name}/seed{self.seed}"

    def multiplier(self, step: int) -> float:
        """The scheduler's LR factor at ``step`` (LambdaLR)."""
        factor = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        return factor * (self.jump if step >= JUMP_AT else 1.0)


def zoo(seeds: list[int]) -> list[RunSpec]:
    runs = []
    for seed in seeds:
        for x in (0.3, 0.6, 1.0, 1.5, 2.0, 2.5, 5.0):
            runs.append(RunSpec("gd_const", f"gd_const_x{x}", seed, "gd", x))
        for j in (2.0, 3.0, 4.0, 8.0):
            runs.append(RunSpec("gd_jump", f"gd_jump_x{j:g}", seed, "gd", 0.5, jump=j))
        for x in (2.0, 3.0):
            for w in (10, 50, 200, 500):
                runs.append(RunSpec("gd_warmup", f"gd_warmup_x{x:g}_w{w}", seed, "gd", x, w))
        for lr in (1e-3, 1e-2, 3e-2, 0.1):
            for w in (0, 100):
                runs.append(RunSpec("adam", f"adam_lr{lr:g}_w{w}", seed, "adam", lr, w))
        for x in (0.5, 1.5, 3.0):
            runs.append(RunSpec("sgd_mini", f"sgd_mini_x{x:g}", seed, "sgd_mini", x))
        runs.append(RunSpec("sgd_mini", "sgd_mini_x0.5_jump4", seed, "sgd_mini", 0.5, jump=4.0))
    return runs


@dataclasses.dataclass(frozen=True)
class Fix:
    """A recommendation applied from ``step`` on: raise the LR from where it is to the
    planned LR over ``warmup`` steps when a warmup is recommended, else keep it under
    ``lr``."""

    step: int
    lr: float
    warmup: int = 0

    def lr_at(self, step: int, planned: float, base: float, spec: RunSpec) -> float:
        if step < self.step:
            return planned
        if not self.warmup:
            return min(planned, self.lr)
        start = min(self.lr, base * spec.multiplier(self.step))
        return min(planned, start + (planned - start) * (step - self.step) / self.warmup)


@dataclasses.dataclass
class RunResult:
    spec: RunSpec
    probe_loss: list[float]
    lr: list[float]
    critical_lr: float
    seconds: float
    monitor: dict[str, int]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data[:512], dtype=torch.float32) / 16.0
    y = torch.nn.functional.one_hot(torch.tensor(digits.target[:512]), 10).float()
    return x, y


_DATA: tuple[torch.Tensor, torch.Tensor] | None = None


def data() -> tuple[torch.Tensor, torch.Tensor]:
    global _DATA
    if _DATA is None:
        _DATA = _data()
    return _DATA


def model_for(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 10),
    )


def train(
    spec: RunSpec,
    endpoint: str,
    *,
    budget: float,
    fix: Fix | None = None,
    job_suffix: str = "",
) -> RunResult:
    """One run, monitored; ``fix`` applies a recommendation from a step on."""
    x, y = data()
    model = model_for(spec.seed)

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((out - target) ** 2).sum(1).mean()

    def probe() -> torch.Tensor:
        return loss_fn(model(x), y)

    if spec.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=spec.scale)
        critical = edgewatch.find_lr(model, optimizer, probe).lr
        base = spec.scale
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        critical = edgewatch.find_lr(model, optimizer, probe).lr
        base = spec.scale * critical
    for group in optimizer.param_groups:
        group["lr"] = base

    def factor(step: int) -> float:
        planned = base * spec.multiplier(step)
        return (fix.lr_at(step, planned, base, spec) if fix else planned) / base

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    batches = _batches(spec, len(x))
    probe_losses: list[float] = []
    lrs: list[float] = []
    started = time.perf_counter()
    first = None
    with edgewatch.attach(
        optimizer,
        model=model,
        job=spec.job + job_suffix,
        endpoint=endpoint,
        probe=probe,
        scheduler=scheduler,
        total_steps=spec.steps,
        budget=budget,
        close_timeout=10.0,
    ) as mon:
        for step in range(spec.steps):
            full = probe()
            value = full.item()
            probe_losses.append(value)
            lrs.append(optimizer.param_groups[0]["lr"])
            first = value if first is None else first
            index = batches(step)
            loss = full if index is None else loss_fn(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            mon.step(loss)
            if not math.isfinite(value) or value > DIVERGED * first:
                mon.close("failed")
                break
    return RunResult(
        spec, probe_losses, lrs, critical, time.perf_counter() - started, dict(mon.stats)
    )


def _batches(spec: RunSpec, n: int) -> Callable[[int], Any]:
    if spec.optimizer != "sgd_mini":
        return lambda step: None
    generator = torch.Generator().manual_seed(1000 + spec.seed)
    order: list[torch.Tensor] = []

    def batch(step: int) -> torch.Tensor:
        if not order:
            order.extend(torch.randperm(n, generator=generator).split(64))
        return order.pop(0)

    return batch
