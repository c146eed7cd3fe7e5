"""What the training thread reads from the optimizer, cheaply and without a GPU sync.

The gradient norm is one fused ``torch._foreach_norm`` per (device, dtype) group, the
same kernel ``torch.nn.utils.clip_grad_norm_`` uses, left on the device as a 0-d tensor:
reading it back is the sender's job, in batches (``readback.py``).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch

from edgewatch._version import __version__
from edgewatch.monitor.thresholds import OptimizerSpec
from edgewatch.schemas import OptimizerInfo


def trainable_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def single_group(params: list[torch.Tensor]) -> bool:
    """Whether all parameters share one device and dtype (checked once, at attach)."""
    return len({(p.device, p.dtype) for p in params}) <= 1


def global_grad_norm(params: list[torch.Tensor], one_group: bool) -> torch.Tensor | None:
    """‖g‖₂ over every parameter's gradient, as a float32 0-d tensor on the first device.

    ``one_group``: all parameters on one device with one dtype, so a single fused
    kernel takes every gradient (the common case; see ``single_group``).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    if one_group:
        norms = list(torch._foreach_norm(grads, 2, dtype=_accumulation_dtype(grads[0])))
    else:
        norms = _grouped_norms(grads, grads[0].device)
    total: torch.Tensor = torch.linalg.vector_norm(torch.stack(norms))
    return total


def _accumulation_dtype(grad: torch.Tensor) -> torch.dtype | None:
    # Half-precision squares overflow: accumulate those in float32. float32 and float64
    # keep their own dtype (asking a float64 norm for float32 is a narrowing error).
    return torch.float32 if grad.dtype in (torch.float16, torch.bfloat16) else None


def _grouped_norms(grads: list[torch.Tensor], out_device: torch.device) -> list[torch.Tensor]:
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    norms: list[torch.Tensor] = []
    for group in groups.values():
        group_norms = torch._foreach_norm(group, 2, dtype=_accumulation_dtype(group[0]))
        total = torch.linalg.vector_norm(torch.stack(group_norms)).float()  # one dtype to stack
        norms.append(total.to(out_device, non_blocking=True))
    return norms


def describe_optimizer(spec: OptimizerSpec) -> OptimizerInfo:
    """The wire's description of the optimizer (the same fields as the spec)."""
    return OptimizerInfo(**spec.as_dict())


def process_identity() -> dict[str, Any]:
    """Rank and world size as torchrun sets them, host, pid, versions."""
    return {
        "rank": int(os.environ.get("RANK", "0")),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "client_version": __version__,
        "torch_version": str(torch.__version__),
    }
