"""scikit-learn's bundled 8×8 digits (1797 images, no download), pixels / 16, and the
pieces the digits families share: minibatch orders and a no-trace evaluation."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch


@functools.cache
def data() -> tuple[torch.Tensor, torch.Tensor]:
    """All images (N, 64) in [0, 1] and their labels (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    return x, torch.tensor(digits.target, dtype=torch.long)


def minibatches(seed: int, n: int, size: int) -> Callable[[int], torch.Tensor]:
    """batch(step) -> indices of that step's minibatch: epochs of a seeded permutation
    of range(n), a pure function of (seed, step) (a trailing partial batch is dropped)."""
    per_epoch = n // size

    def batch(step: int) -> torch.Tensor:
        epoch, k = divmod(step, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        return order[k * size : (k + 1) * size]

    return batch


@contextlib.contextmanager
def traceless(model: torch.nn.Module) -> Iterator[None]:
    """No gradients, and BatchNorm's running statistics put back afterwards: an
    evaluation in train mode that leaves the model as it found it."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.no_grad():
            yield
    finally:
        with torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)


def classifier(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    plan: Callable[[int], float],
    seed: int,
    *,
    train: int,
    batch: int,
    probe: int,
    shape: tuple[int, ...] = (-1, 64),
) -> Any:
    """The Setup of a digits classifier with cross-entropy: seeded minibatches of the
    first ``train`` images, ``probe`` of them spread evenly for the sharpness, and the
    loss on every other held-out image for labels (evaluated without a trace)."""
    from . import Setup

    images, labels = data()
    x, y = images[:train].view(*shape), labels[:train]
    held_x, held_y = images[train::2].view(*shape), labels[train::2]
    probe_index = torch.arange(probe) * (train // probe)

    def loss(index: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(x[index]), y[index])

    def label_loss() -> float:
        with traceless(model):
            return float(torch.nn.functional.cross_entropy(model(held_x), held_y))

    return Setup(
        model=model,
        optimizer=optimizer,
        planned_lr=plan,
        batch=minibatches(seed, train, batch),
        loss=loss,
        probe=lambda: loss(probe_index),
        label_loss=label_loss,
        probe_batch=probe,
    )
