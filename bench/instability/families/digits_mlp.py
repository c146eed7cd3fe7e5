"""digits_mlp: the runs of the first benchmark (bench/RESULTS.md, "Stability
prediction"), kept as one family here: a tanh MLP 64-64-64-10 on the first 512 digits
with the squared loss on one-hot targets (Cohen et al. 2021's setting: it sharpens
progressively and trains at the edge of stability). GD LRs are multiples x of the
critical LR at initialisation, η_c = 2/λ₀ (``edgewatch.find_lr``).
Probe (sharpness) and labels: the full 512-example loss (for full-batch runs, the
training loss itself).

What it is for: the classic edge-of-stability dynamics and LR-plan failures.
- gd: full-batch GD at constant x (sharpening, EoS, catapults, divergence);
- gd_jump: x = 0.5 for JUMP_AT steps, then ×J;
- gd_warmup: linear warmup to x = 3 over W steps;
- adam: full-batch Adam at a fixed LR, with or without a 100-step warmup;
- sgd_mini: minibatch SGD (batch 64) at x, or x = 0.5 jumping ×4.
The GD LRs follow ``find_lr``'s estimate of λ₀: when its Lanczos changes, the runs
shift (a main-branch change moved five seed-1 onsets by 1-2 steps). Trimmed from v1's 31
configs to 20 (gd x ∈ 0.3-5, three jumps, two warmups, four Adam, four minibatch), with
more of the healthy ones.

Calibration (2026-11-29, 2 cores AMD EPYC, client of main 9ff78cc,
`.venv/bin/python -m bench.instability.calibrate --seeds 0 1`):
40 runs (20 configs × seeds 0, 1), 17579 steps, 28 s: 17 event-free; 17 MAJOR (GD x 0.8
on seed 0, the ×2 jump, the slow warmup, Adam 1e-2 and 0.1, minibatch x 3 at step 1 on
seed 0) and 14 DIVERGENCE (x 2.5 and 5, jumps ×4 and ×8, the fast warmup, minibatch
x 3 and its ×4 jump).
"""

from __future__ import annotations

import torch

from . import RunSpec, Setup, digits, schedules

NAME = "digits_mlp"
STEPS = 600
JUMP_AT = 300
N = 512
BATCH = 64


def grid(seeds: list[int]) -> list[RunSpec]:
    runs = []
    for seed in seeds:
        for x in (0.3, 0.6, 0.8, 1.0, 1.5, 2.5, 5.0):
            runs.append(_spec(f"mlp_gd_x{x:g}", seed, "gd", x))
        for j in (2.0, 4.0, 8.0):
            runs.append(_spec(f"mlp_gd_jump{j:g}", seed, "gd", 0.5, jump=j))
        for w in (50, 500):
            runs.append(_spec(f"mlp_gd_warmup_x3_w{w}", seed, "gd", 3.0, warmup=w))
        for lr, w in ((1e-3, 0), (3e-3, 100), (1e-2, 100), (1e-1, 0)):
            runs.append(_spec(f"mlp_adam_lr{lr:g}_w{w}", seed, "adam", lr, warmup=w))
        for x in (0.5, 1.0, 3.0):
            runs.append(_spec(f"mlp_sgd_mini_x{x:g}", seed, "sgd_mini", x))
        runs.append(_spec("mlp_sgd_mini_x0.5_jump4", seed, "sgd_mini", 0.5, jump=4.0))
    return runs


def _spec(
    name: str, seed: int, kind: str, scale: float, warmup: int = 0, jump: float = 1.0
) -> RunSpec:
    return RunSpec.make(NAME, name, seed, STEPS, kind=kind, scale=scale, warmup=warmup, jump=jump)


def model_for(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 10),
    )


def build(spec: RunSpec) -> Setup:
    import edgewatch

    images, labels = digits.data()
    x, y = images[:N], torch.nn.functional.one_hot(labels[:N], 10).float()
    model = model_for(spec.seed)

    def squared(index: torch.Tensor | None) -> torch.Tensor:
        out, target = (model(x), y) if index is None else (model(x[index]), y[index])
        return 0.5 * ((out - target) ** 2).sum(1).mean()

    def probe() -> torch.Tensor:
        return squared(None)

    kind, scale = spec.get("kind"), float(spec.get("scale"))
    if kind == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=scale)
        base = scale
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        base = scale * edgewatch.find_lr(model, optimizer, probe).lr
    plan = schedules.jump(
        schedules.warmup(base, int(spec.get("warmup"))), JUMP_AT, float(spec.get("jump"))
    )
    if kind == "sgd_mini":
        batch = digits.minibatches(1000 + spec.seed, N, BATCH)
    else:

        def batch(step: int) -> None:
            return None

    def label_loss() -> float:
        with torch.no_grad():
            return float(probe())

    return Setup(model, optimizer, plan, batch, squared, probe, label_loss, probe_batch=N)
