"""How the stability threshold moves with the batch size, measured, not by a rule.

Under SGD the full-batch sharpness sits below 2/η, the further the smaller the batch;
what sits at the edge is the *batch sharpness* E_B[g_Bᵀ H_B g_B / ‖g_B‖²], the curvature
of each minibatch's loss along its own gradient (Andreyev & Beneventano, arXiv
2412.20553). So the LR a batch size supports is the constant over the batch sharpness
at that size, and moving to another size moves it by the ratio of the two measured
values, whatever a linear or square-root rule would say. For Adam-type optimizers the
same is done with the preconditioned sharpness λ_max(P⁻¹H_B) of minibatches of each size
(Cohen et al. 2022, arXiv 2207.14484, see the effect grow with the batch).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import torch

from edgewatch.monitor.curvature import sharpness
from edgewatch.monitor.isolation import private_generator, untouched
from edgewatch.trial.report import BatchScaling
from edgewatch.trial.train import BatchLoss

SGD_BATCHES = 8  # one HVP each
ADAM_BATCHES = 3  # one Lanczos run each


def measure_batch_scaling(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: BatchLoss,
    trial_batches: Callable[[], Any],
    target_batches: Callable[[], Any],
    constant: float,
    preconditioned: bool,
    peak_lr: float,
    peak_ratio: float,
) -> BatchScaling:
    """Both sizes measured at the trained copy's point (the end of the trial)."""
    params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    sizes, values = [], []
    with untouched(model, params):
        for read in (trial_batches, target_batches):
            first = read()
            sizes.append(batch_size(first))
            if preconditioned:
                values.append(_preconditioned(model, optimizer, loss, read, first))
            else:
                values.append(_batch_sharpness(model, params, loss, read, first))
    ratio = values[0] / values[1] if values[1] > 0 else math.nan
    edge = [constant / v if v > 0 else math.inf for v in values]
    kept = peak_lr * ratio if math.isfinite(peak_ratio) else edge[1] * 0.9
    return BatchScaling(
        sizes[0],
        sizes[1],
        values[0],
        values[1],
        "preconditioned sharpness" if preconditioned else "batch sharpness",
        edge[0],
        edge[1],
        kept,
    )


def _batch_sharpness(
    model: torch.nn.Module,
    params: list[torch.Tensor],
    loss: BatchLoss,
    read: Callable[[], Any],
    first: Any,
) -> float:
    values = []
    for i in range(SGD_BATCHES):
        batch = first if i == 0 else read()
        grads = torch.autograd.grad(loss(model, batch), params, create_graph=True)
        g = [x.detach() for x in grads]
        hg = torch.autograd.grad(grads, params, grad_outputs=g)  # H_B g_B
        ghg = sum(float((a * b).sum()) for a, b in zip(g, hg, strict=True))
        gg = sum(float((a * a).sum()) for a in g)
        if gg > 0:
            values.append(ghg / gg)
    return statistics.fmean(values) if values else math.nan


def _preconditioned(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: BatchLoss,
    read: Callable[[], Any],
    first: Any,
) -> float:
    values, generator = [], private_generator(0)
    for i in range(ADAM_BATCHES):
        batch = first if i == 0 else read()
        est = sharpness(model, _bound(model, loss, batch), optimizer, generator=generator)
        values.append(est.value)
    return statistics.fmean(values)


def _bound(model: torch.nn.Module, loss: BatchLoss, batch: Any) -> Callable[[], torch.Tensor]:
    return lambda: loss(model, batch)


def batch_size(batch: Any) -> int | None:
    """The leading dimension of the batch's first tensor (None if it has none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else None
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, list | tuple):
        for item in batch:
            size = batch_size(item)
            if size is not None:
                return size
    return None
