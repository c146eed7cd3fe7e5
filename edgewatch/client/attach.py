"""``edgewatch.attach(...)``: the one call a training script makes (DESIGN.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Unpack

import torch

from edgewatch.client.arguments import endpoint_list
from edgewatch.client.monitor import Monitor
from edgewatch.client.options import AttachOptions, OptionKeywords


def attach(
    optimizer: torch.optim.Optimizer,
    model: torch.nn.Module | None = None,
    *,
    job: str,
    endpoint: str | Sequence[str] | None = None,
    probe: Callable[[], torch.Tensor] | None = None,
    scheduler: Any = None,
    total_steps: int | None = None,
    budget: float = 0.02,
    **options: Unpack[OptionKeywords],
) -> Monitor:
    """Start monitoring ``optimizer``'s training; ``options`` are the fields of
    :class:`AttachOptions` (checked before anything starts).

    ``endpoint``: a daemon's ZeroMQ endpoint, or a list of them (the client moves to the
    next when the one it sends to stops answering); default ``$EDGEWATCH_ENDPOINT`` (one,
    or several separated by commas) or tcp://127.0.0.1:5555.
    """
    return Monitor(
        optimizer,
        model,
        job=job,
        endpoint=endpoint_list(endpoint),
        probe=probe,
        scheduler=scheduler,
        total_steps=total_steps,
        budget=budget,
        options=AttachOptions.of(options),
    )
