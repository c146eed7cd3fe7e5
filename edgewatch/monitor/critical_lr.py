"""The critical learning rate at initialisation, from a handful of HVPs.

Kalra & Barkeshli 2024 ("Why Warmup the Learning Rate?", arXiv 2406.09405) show that
the sharpness at initialisation λ₀ sets the LR a network can take without warmup:
η_c ≈ 2/λ₀ for GD (a quadratic's stability limit, Cohen et al. 2021), and for Adam the
same limit on the preconditioned sharpness, η_c ≈ (2 + 2β1)/((1 − β1)·λ₀ᴾ) (Cohen et al.
2022). Above η_c the first steps catapult or diverge; a warmup lets the network flatten
first. So one Lanczos run at step 0 replaces an LR range test's hundreds of steps.

Adam has no second-moment estimate before its first step; its first step divides by
|g| + ε (v̂ = g² after one step), so that is the preconditioner used here.
"""

from __future__ import annotations

import dataclasses

import torch

from edgewatch.monitor.curvature import adam_preconditioner
from edgewatch.monitor.eigen import COLD_EXPLORE, top_eigenvalue
from edgewatch.monitor.hvp import HessianOperator, Probe, flat_params
from edgewatch.monitor.isolation import untouched
from edgewatch.monitor.thresholds import OptimizerSpec


@dataclasses.dataclass(frozen=True)
class CriticalLR:
    lr: float
    """η_c: the largest LR that is stable at the current point without warmup."""
    sharpness: float
    """λ₀, preconditioned for Adam-type optimizers."""
    preconditioned: bool
    matvecs: int
    converged: bool

    def __str__(self) -> str:
        kind = "preconditioned sharpness" if self.preconditioned else "sharpness"
        return (
            f"critical LR {self.lr:.4g} ({kind} {self.sharpness:.4g}, {self.matvecs} HVPs); "
            "above it, warm up"
        )


def find_lr(
    model: torch.nn.Module | list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    probe: Probe,
    *,
    tol: float = 1e-3,
    max_iter: int = 30,
    seed: int = 0,
) -> CriticalLR:
    """η_c for ``optimizer``'s kind and hyper-parameters at the model's current point.

    ``probe``: zero-argument callable returning the loss on a fixed batch. The
    optimizer's LR is not used or changed; its kind, momentum and betas are.
    """
    params = flat_params(model)
    group = optimizer.param_groups[0]
    spec = OptimizerSpec.of(optimizer)
    scale = None
    module = model if isinstance(model, torch.nn.Module) else None
    with untouched(module, params):
        if spec.preconditioned:
            scale = adam_preconditioner(optimizer, params)
            if scale is None:  # no state yet: Adam's first step divides by |g| + eps
                grad = HessianOperator(params, probe).gradient.detach()
                scale = (grad.abs() + float(group.get("eps", 1e-8))).rsqrt()
        operator = HessianOperator(params, probe, scale)
        generator = torch.Generator().manual_seed(seed)
        v0 = torch.randn(operator.dim, generator=generator, dtype=params[0].dtype)
        est = top_eigenvalue(
            operator,
            v0.to(params[0].device),
            method="lanczos",
            tol=tol,
            max_iter=max_iter,
            min_iter=min(COLD_EXPLORE, max_iter),  # a random start: explore first
        )
    # threshold(η) = constant/η for every optimizer here: η_c = constant/λ₀.
    constant = spec.threshold(1.0)
    lr = constant / est.value if est.value > 0 else float("inf")
    return CriticalLR(lr, est.value, scale is not None, est.matvecs, est.converged)
