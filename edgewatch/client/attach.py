"""``edgewatch.attach(...)``: the one call a training script makes (DESIGN.md)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Unpack

import torch

from edgewatch.client.arguments import DEFAULT_ENDPOINT
from edgewatch.client.monitor import Monitor
from edgewatch.client.options import AttachOptions, OptionKeywords


def attach(
    optimizer: torch.optim.Optimizer,
    model: torch.nn.Module | None = None,
    *,
    job: str,
    endpoint: str | None = None,
    probe: Callable[[], torch.Tensor] | None = None,
    scheduler: Any = None,
    total_steps: int | None = None,
    budget: float = 0.02,
    **options: Unpack[OptionKeywords],
) -> Monitor:
    """Start monitoring ``optimizer``'s training; ``options`` are the fields of
    :class:`AttachOptions` (checked before anything starts).

    ``endpoint`` defaults to ``$EDGEWATCH_ENDPOINT`` or tcp://127.0.0.1:5555.
    """
    endpoint = endpoint or os.environ.get("EDGEWATCH_ENDPOINT", DEFAULT_ENDPOINT)
    return Monitor(
        optimizer,
        model,
        job=job,
        endpoint=endpoint,
        probe=probe,
        scheduler=scheduler,
        total_steps=total_steps,
        budget=budget,
        options=AttachOptions.of(options),
    )
