"""fast_cnn: a tiny CNN (conv 8 - pool - conv 16 - pool - linear, ReLU, no BatchNorm) on
the 8×8 digits, cross-entropy, minibatch 32 from 1536 training images, SGD with
heavy-ball momentum 0.9 at a constant LR: about 1 ms a step on one core, the size of a
user's quick experiment. Probe (sharpness): 64 fixed training images. Labels: the loss
on 130 held-out images (``digits.classifier``).

What it is for: short runs as users start them (a few hundred steps, one LR), with
momentum's threshold (2 + 2β)/η: healthy LRs, a scheduled ×10 or ×30 jump at JUMP_AT
from a healthy LR, and LRs too hot from the first step.

Calibration (2026-12-03, 2 cores AMD EPYC, budget 0.02; the labels do not depend on
the client: monitors never change the run), `.venv/bin/python -m bench.instability.calibrate
--seeds 0 1 --families fast_cnn`:
14 runs (7 configs × seeds 0, 1), 7000 steps, 29 s (1.3-2.1 ms median step): 4
event-free (LR 0.003 and 0.01); MAJOR at LR 0.02 (303; 295, 357, 460: spikes of its
own), after the ×10 jump (251-252, then more), at LR 0.2 (from step 34-37); DIVERGENCE
after the ×30 jump (251, both seeds), at LR 0.7 (23-26) and LR 0.2 on seed 1 (99).
LR 0.3-1 on one seed or the other, and 3 and 10, leave the net at chance (a 2-5×
rise that never recovers, unscored, or no rise at all): not in the grid.
"""

from __future__ import annotations

import torch
from torch import nn

from . import RunSpec, Setup, digits, schedules

NAME = "fast_cnn"
TRAIN = 1536
STEPS = 500
JUMP_AT = 250
BATCH = 32
PROBE = 64

HEALTHY = (0.003, 0.01, 0.02)  # 0.02 trains, with one or more spikes of its own near 300
JUMPS = ((0.01, 10.0), (0.01, 30.0))
HOT = (0.2, 0.7)


def run(seed: int, lr: float, *, jump: float = 1.0) -> RunSpec:
    name = f"fcnn_lr{lr:g}" + (f"_jump{jump:g}at{JUMP_AT}" if jump != 1.0 else "")
    return RunSpec.make(NAME, name, seed, STEPS, lr=lr, jump=jump)


def grid(seeds: list[int]) -> list[RunSpec]:
    """Healthy LRs first, then the jumps, then the LRs too hot from the start."""
    out = []
    for seed in seeds:
        out += [run(seed, lr) for lr in HEALTHY]
        out += [run(seed, lr, jump=j) for lr, j in JUMPS]
        out += [run(seed, lr) for lr in HOT]
    return out


def model_for(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 8, 4, 4)
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 16, 2, 2)
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 10),
    )


def build(spec: RunSpec) -> Setup:
    model = model_for(spec.seed)
    lr = float(spec.get("lr"))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    plan = schedules.jump(schedules.constant(lr), JUMP_AT, float(spec.get("jump")))
    return digits.classifier(
        model,
        optimizer,
        plan,
        spec.seed,
        train=TRAIN,
        batch=BATCH,
        probe=PROBE,
        shape=(-1, 1, 8, 8),
    )
