"""char_rnn: a character-level recurrent LM (embedding 64, one GRU layer of 128 units,
linear read-out) on the corpus of ``edgewatch_testkit/corpus.py``, context 64, batch 16,
Adam (β 0.9, 0.999), no clipping, at a constant LR from safe to too hot, a jump or a
warmup over the edge. Probe (sharpness): 4 fixed training windows. Labels: the loss on 8
fixed held-out windows.

What it is for: recurrent nets (gradients through time, a different curvature) with
Adam, the optimizer users give them. Adam keeps the GRU's loss bounded: up to LR 0.1 it
trains (worse), at 0.2-0.3 the loss creeps up 1.8-2.7× and stays (unscored, left
out), at 1 and beyond it diverges; no LR here gave a recovering ≥ 2× spike, so this
family has divergences and no MAJOR events.

Calibration (2026-11-29, 2 cores AMD EPYC, client of main 9ff78cc,
`.venv/bin/python -m bench.instability.calibrate --seeds 0 1`):
8 runs (seed 0 only), 2243 steps, 74 s: 5 event-free (LR 1e-3 to 0.1); DIVERGENCE at 1
(lr 1), 151 (jump ×300 at 150), 22 (warmup to 3 over 150 steps).
"""

from __future__ import annotations

import torch
from torch import nn

from edgewatch_testkit import corpus

from . import RunSpec, Setup, schedules, text

NAME = "char_rnn"
CONTEXT = 64
BATCH = 16
EMBED = 64
HIDDEN = 128
PROBE = 4
LABEL = 8


def run(
    seed: int, steps: int, lr: float, *, warmup: int = 0, jump_at: int = 0, jump: float = 1.0
) -> RunSpec:
    name = f"rnn_lr{lr:g}" + (f"_w{warmup}" if warmup else "")
    name += f"_jump{jump:g}at{jump_at}" if jump != 1.0 else ""
    return RunSpec.make(NAME, name, seed, steps, lr=lr, warmup=warmup, jump_at=jump_at, jump=jump)


def grid(seeds: list[int]) -> list[RunSpec]:
    """One seed (an expensive family): safe to hot constant LRs, then the failures."""
    out = []
    for seed in seeds[:1]:
        out += [run(seed, 300, lr) for lr in (1e-3, 3e-3, 1e-2, 3e-2, 0.1)]
        out += [
            run(seed, 300, 1.0),
            run(seed, 300, 3e-3, jump_at=150, jump=300.0),
            run(seed, 300, 3.0, warmup=150),
        ]
    return out


class CharGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(corpus.VOCAB, EMBED)
        self.gru = nn.GRU(EMBED, HIDDEN, batch_first=True)
        self.out = nn.Linear(HIDDEN, corpus.VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.gru(self.embed(idx))
        logits: torch.Tensor = self.out(hidden)
        return logits


def build(spec: RunSpec) -> Setup:
    torch.manual_seed(spec.seed)
    model = CharGRU()
    lr = float(spec.get("lr"))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    plan = schedules.jump(
        schedules.warmup(lr, int(spec.get("warmup", 0))),
        int(spec.get("jump_at")),
        float(spec.get("jump")),
    )
    return text.language_model(
        model, optimizer, plan, spec.seed, batch=BATCH, context=CONTEXT, probe=PROBE, label=LABEL
    )
