"""The Setup of the character language models (char_gpt, char_rnn, fast_gru), on the
corpus of ``edgewatch_testkit/corpus.py`` with the loss of ``edgewatch_testkit/gpt.py``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from edgewatch_testkit.corpus import batch_sampler, fixed_windows, held_out_tokens, train_tokens
from edgewatch_testkit.gpt import next_token_loss


def language_model(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    plan: Callable[[int], float],
    seed: int,
    *,
    batch: int,
    context: int,
    probe: int,
    label: int,
    clip: float | None = None,
) -> Any:
    """The Setup of a character LM: seeded training windows, ``probe`` fixed training
    windows for the sharpness, the loss on ``label`` fixed held-out windows for labels."""
    from . import Setup

    probe_rows = fixed_windows(train_tokens(), probe, context)
    label_rows = fixed_windows(held_out_tokens(), label, context)

    def label_loss() -> float:
        with torch.no_grad():
            return float(next_token_loss(model, label_rows))

    return Setup(
        model=model,
        optimizer=optimizer,
        planned_lr=plan,
        batch=batch_sampler(seed, batch, context),
        loss=lambda rows: next_token_loss(model, rows),
        probe=lambda: next_token_loss(model, probe_rows),
        label_loss=label_loss,
        clip=clip,
        probe_batch=probe,
    )
