"""fast_gru: a small character-level GRU (embedding 16, one GRU layer of 32 units,
linear read-out) on the corpus of ``edgewatch_testkit/corpus.py``, context 16, batch 8,
Adam (β 0.9, 0.999), no clipping, at a constant LR: about 3 ms a step on one core (a
GRU's steps through time are sequential). Probe (sharpness): 8 fixed training windows.
Labels: the loss on 32 fixed held-out windows (``text.language_model``).

What it is for: a recurrent net with Adam on a short run: healthy LRs, a scheduled ×20
or ×30 jump at JUMP_AT from a healthy LR, and LRs too hot from the first step.

Calibration (2026-12-03, 2 cores AMD EPYC, budget 0.02; the labels do not depend on
the client: monitors never change the run), `.venv/bin/python -m bench.instability.calibrate
--seeds 0 1 --families fast_gru`:
16 runs (8 configs × seeds 0, 1), 5526 steps, 53 s (2.7-10 ms median step, the
machine shared): 8 event-free (LR 3e-3 to 0.1); DIVERGENCE after the ×20 and ×30
jumps (201, every run) and at LR 3 and 10 (step 1). No MAJOR events: Adam keeps the
GRU's loss bounded or lets it run away, as in char_rnn.
"""

from __future__ import annotations

import torch
from torch import nn

from edgewatch_testkit import corpus

from . import RunSpec, Setup, schedules, text

NAME = "fast_gru"
STEPS = 400
JUMP_AT = 200
CONTEXT = 16
BATCH = 8
EMBED = 16
HIDDEN = 32
PROBE = 8
LABEL = 32

HEALTHY = (3e-3, 1e-2, 3e-2, 0.1)
# Adam keeps the GRU bounded after a ×10 jump (the loss climbs 2-6× and stays there,
# unscored): the jumps that make an event are ×20 and ×30.
JUMPS = ((0.05, 30.0), (0.1, 20.0))
HOT = (3.0, 10.0)


def run(seed: int, lr: float, *, jump: float = 1.0) -> RunSpec:
    name = f"fgru_lr{lr:g}" + (f"_jump{jump:g}at{JUMP_AT}" if jump != 1.0 else "")
    return RunSpec.make(NAME, name, seed, STEPS, lr=lr, jump=jump)


def grid(seeds: list[int]) -> list[RunSpec]:
    """Healthy LRs first, then the jumps, then the LRs too hot from the start."""
    out = []
    for seed in seeds:
        out += [run(seed, lr) for lr in HEALTHY]
        out += [run(seed, lr, jump=j) for lr, j in JUMPS]
        out += [run(seed, lr) for lr in HOT]
    return out


class TinyGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(corpus.VOCAB, EMBED)
        self.gru = nn.GRU(EMBED, HIDDEN, batch_first=True)
        self.out = nn.Linear(HIDDEN, corpus.VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.gru(self.embed(idx))  # (B, T, HIDDEN)
        logits: torch.Tensor = self.out(hidden)  # (B, T, VOCAB)
        return logits


def build(spec: RunSpec) -> Setup:
    torch.manual_seed(spec.seed)
    model = TinyGRU()
    lr = float(spec.get("lr"))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    plan = schedules.jump(schedules.constant(lr), JUMP_AT, float(spec.get("jump")))
    return text.language_model(
        model, optimizer, plan, spec.seed, batch=BATCH, context=CONTEXT, probe=PROBE, label=LABEL
    )
