"""scikit-learn's bundled 8×8 digits (1797 images, no download), pixels / 16, and the
pieces the digits families share: minibatch orders and a no-trace evaluation."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

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
