"""fast_mlp: a ReLU MLP 64-64-64-10 on the 8×8 digits, cross-entropy, minibatch 64 from
1536 training images, AdamW (weight decay 0.01) under a linear warmup of WARMUP steps and
a cosine decay to a tenth (nanoGPT's plan, ``schedules.warmup_cosine``): under 1 ms a
step on one core, a user's first try of a new model. Probe (sharpness): 64 fixed
training images. Labels: the loss on 130 held-out images (``digits.classifier``).

What it is for: Adam's threshold 38/η on a short run with the usual plan: healthy peak
LRs, the plan multiplied ×10 or ×30 from JUMP_AT on (a mistyped resume), and peak LRs
too hot for the warmup to save.

Calibration (2026-12-03, 2 cores AMD EPYC, budget 0.02; the labels do not depend on
the client: monitors never change the run), `.venv/bin/python -m bench.instability.calibrate
--seeds 0 1 --families fast_mlp`:
16 runs (8 configs × seeds 0, 1), 8000 steps, 23 s (0.9-1.5 ms median step): 6
event-free (peak LR 3e-4 to 3e-3); MAJOR at peak LR 1e-2 (33, the end of the warmup;
160 on seed 1), after the ×10 jump (255-267), at peak LR 0.3 and 1 (from step 5-25,
recurring); DIVERGENCE after the ×30 jump (251-252).
"""

from __future__ import annotations

import torch
from torch import nn

from . import RunSpec, Setup, digits, schedules

NAME = "fast_mlp"
TRAIN = 1536
STEPS = 500
WARMUP = 30
JUMP_AT = 250
BATCH = 64
PROBE = 64

HEALTHY = (3e-4, 1e-3, 3e-3)
EDGE = (1e-2,)  # trains, with a spike of its own (at the end of the warmup, or later)
JUMPS = ((3e-3, 10.0), (3e-3, 30.0))
HOT = (0.3, 1.0)


def run(seed: int, lr: float, *, jump: float = 1.0) -> RunSpec:
    name = f"fmlp_lr{lr:g}" + (f"_jump{jump:g}at{JUMP_AT}" if jump != 1.0 else "")
    return RunSpec.make(NAME, name, seed, STEPS, lr=lr, jump=jump)


def grid(seeds: list[int]) -> list[RunSpec]:
    """Healthy LRs first, then the jumps, then the LRs too hot from the start."""
    out = []
    for seed in seeds:
        out += [run(seed, lr) for lr in HEALTHY + EDGE]
        out += [run(seed, lr, jump=j) for lr, j in JUMPS]
        out += [run(seed, lr) for lr in HOT]
    return out


def build(spec: RunSpec) -> Setup:
    torch.manual_seed(spec.seed)
    model = nn.Sequential(
        nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    lr = float(spec.get("lr"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    plan = schedules.jump(
        schedules.warmup_cosine(lr, WARMUP, spec.steps), JUMP_AT, float(spec.get("jump"))
    )
    return digits.classifier(
        model, optimizer, plan, spec.seed, train=TRAIN, batch=BATCH, probe=PROBE
    )
