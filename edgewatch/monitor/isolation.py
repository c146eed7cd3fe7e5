"""Curvature work leaves no trace on the run it watches.

A probe in ``train()`` mode draws dropout masks from the global generators, and a random
start vector drawn with ``torch.randn`` does too; either would shift every later batch
index and dropout mask of the user's run, so a run with the monitor would not be the
run without it. Everything here runs its random draws on a private generator and puts
back, afterwards, the global states of torch (CPU and the CUDA devices of the
parameters), Python's ``random`` and NumPy, and the model's buffers (BatchNorm's
running statistics). ``.grad`` is never written: Hessian-vector products go through
``torch.autograd.grad``, which returns gradients instead of accumulating them.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from edgewatch.monitor.hvp import buffers_restored


def private_generator(seed: int | None = None) -> torch.Generator:
    """A CPU generator of our own: seeded from ``seed``, else from the OS's entropy
    (never from, and never advancing, the global torch generator)."""
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") >> 1  # manual_seed takes < 2**63
    return torch.Generator().manual_seed(seed)


def seed_globals(seed: int, tensors: Sequence[torch.Tensor]) -> None:
    """Seed torch's CPU generator and those of the CUDA devices ``tensors`` live on (only
    those: their states are the ones ``rng_preserved`` puts back). Inside
    ``rng_preserved`` only: a probe with dropout then draws the same masks in every slice
    of one estimate, so that the slices work on one operator, not a new one each step."""
    torch.default_generator.manual_seed(seed)
    for index in _cuda_devices(tensors):
        torch.cuda.default_generators[index].manual_seed(seed)


def _cuda_devices(tensors: Sequence[torch.Tensor]) -> list[int]:
    devices = set()
    for t in tensors:
        if t.device.type == "cuda":
            devices.add(t.device.index if t.device.index is not None else 0)
    return sorted(devices)


@contextlib.contextmanager
def rng_preserved(tensors: Sequence[torch.Tensor]) -> Iterator[None]:
    """Restore the global RNG states on exit: torch's CPU generator, the generators of
    the CUDA devices ``tensors`` live on, Python's ``random`` and NumPy's global state."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=_cuda_devices(tensors)):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@contextlib.contextmanager
def untouched(model: torch.nn.Module | None, params: Sequence[torch.Tensor]) -> Iterator[None]:
    """Run curvature work on ``model``: its buffers and every global RNG state as before."""
    with rng_preserved(params), buffers_restored(model):
        yield
