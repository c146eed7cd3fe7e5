"""digits_cnn: a small CNN with BatchNorm on the 8×8 digits (conv 16 - conv 32 - pool -
conv 32 - linear, each conv followed by BatchNorm and ReLU), cross-entropy, minibatch 64
from 1536 training images, SGD with heavy-ball or Nesterov momentum 0.9 and weight decay
5e-4, at a constant LR or under a cosine decay (after a 20-step warmup), LRs from safe
to too hot, and LR jumps. Probe (sharpness): 64 fixed training images. Labels: the loss
on 130 held-out images (every second of the last 261), in train mode (batch statistics),
BatchNorm's running statistics restored.

What it is for: the momentum-SGD CNN of the benchmark (heavy-ball at small LRs trains fine and
must not alarm again and again), BatchNorm (the sharpness of a scale-invariant net), and
the momentum thresholds (2 + 2β)/η and (2 + 2β)/((1 + 2β)·η).

Why held-out labels: a fixed training batch's loss falls to 1e-4 here, where any wobble
doubles it (86 MAJOR events in 24 runs, healthy ones included). Why weight decay and 130
images: with 66 images and no decay, a lucky early minimum and the slow rise of an
overfitting net left 5 of 20 runs 2× above their best at the end (unscored).

Calibration (2026-11-29, 2 cores AMD EPYC, client of main 9ff78cc,
`.venv/bin/python -m bench.instability.calibrate --seeds 0 1`):
20 runs (14 configs on seed 0, 6 of them again on seed 1), 7508 steps, 89 s: 9
event-free; MAJOR in 7 runs (heavy-ball at LR 0.1 on both seeds, at 0.3 on seed 1 and at
1; Nesterov + cosine at 0.1, and at 1 on both seeds); DIVERGENCE at 1 (LR 10), 186
(LR 1), and at 201-208 (jumps ×30 and ×300).
"""

from __future__ import annotations

import torch
from torch import nn

from . import RunSpec, Setup, digits, schedules

NAME = "digits_cnn"
TRAIN = 1536
STEPS = 400
JUMP_AT = 200
WEIGHT_DECAY = 5e-4  # the usual for SGD on CNNs; it also slows the drift of an overfit
BATCH = 64
PROBE = 64


def run(
    seed: int,
    steps: int,
    lr: float,
    *,
    nesterov: bool = False,
    cosine: bool = False,
    jump_at: int = 0,
    jump: float = 1.0,
) -> RunSpec:
    parts = [f"lr{lr:g}", "nesterov" if nesterov else "heavyball"]
    parts += ["cos"] if cosine else []
    parts += [f"jump{jump:g}at{jump_at}"] if jump != 1.0 else []
    return RunSpec.make(
        NAME,
        "cnn_" + "_".join(parts),
        seed,
        steps,
        lr=lr,
        nesterov=nesterov,
        cosine=cosine,
        jump_at=jump_at,
        jump=jump,
    )


def grid(seeds: list[int]) -> list[RunSpec]:
    """Healthy runs first, then the failing ones; the second seed repeats six configs."""
    out = []
    for i, seed in enumerate(seeds):
        configs = [
            run(seed, STEPS, 0.01),
            run(seed, STEPS, 0.03),
            run(seed, STEPS, 0.1),
            run(seed, STEPS, 0.01, cosine=True),
            run(seed, STEPS, 0.01, nesterov=True),
            run(seed, STEPS, 0.03, nesterov=True),
            run(seed, STEPS, 0.03, nesterov=True, cosine=True),
            run(seed, STEPS, 0.3),
            run(seed, STEPS, 1.0),
            run(seed, STEPS, 0.1, nesterov=True, cosine=True),
            run(seed, STEPS, 1.0, nesterov=True, cosine=True),
            run(seed, STEPS, 10.0),
            run(seed, STEPS, 0.03, jump_at=JUMP_AT, jump=30.0),
            run(seed, STEPS, 0.01, nesterov=True, jump_at=JUMP_AT, jump=300.0),
        ]
        out += configs if i == 0 else [configs[k] for k in (1, 2, 6, 7, 10, 12)]
    return out


def model_for(seed: int) -> nn.Module:
    torch.manual_seed(seed)

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 16),
        *block(16, 32),
        nn.MaxPool2d(2),
        *block(32, 32),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def build(spec: RunSpec) -> Setup:
    model = model_for(spec.seed)
    lr = float(spec.get("lr"))
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=lr,
        momentum=0.9,
        nesterov=bool(spec.get("nesterov")),
        weight_decay=WEIGHT_DECAY,
    )
    steps = spec.steps
    plan = schedules.warmup_cosine(lr, 20, steps, 0.0) if spec.get("cosine") else None
    plan = plan or schedules.constant(lr)
    plan = schedules.jump(plan, int(spec.get("jump_at")), float(spec.get("jump")))
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
