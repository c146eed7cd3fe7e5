"""Sharpness of a model on a probe batch: λ_max(H), or λ_max(P⁻¹H) for Adam-type optimizers.

Adam divides each coordinate's step by P = √v̂ + ε, with v̂ = v / (1 − β2^t) its
bias-corrected second-moment estimate. Its stability is governed by the preconditioned
sharpness λ_max(P⁻¹H) (Cohen et al. 2022, arXiv 2207.14484, §3), which is the top
eigenvalue of the symmetric D·H·D with D = P^(-1/2). That is what this computes, from the
optimizer's own state, against the threshold (2 + 2β1)/((1 − β1)·η) = 38/η at β1 = 0.9.

Also here: the curvature along the update actually taken, one HVP: u·Hu/‖u‖², for Adam
u·Hu/(u·Pu) (the Rayleigh quotient of the pencil (H, P), at most λ_max(P⁻¹H), so it is
read against the same threshold; Bai et al. 2025, arXiv 2506.04805), and the one-step
limit η_max = 2(g·u)/(u·Hu), the largest step along u for which the local quadratic model
does not raise the loss.

Every function here runs the probe with the global RNG states and the model's buffers
put back afterwards (``monitor/isolation.py``): it leaves the training run as it was.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch

from edgewatch.monitor.eigen import COLD_EXPLORE, EigenEstimate, top_eigenvalue
from edgewatch.monitor.hvp import HessianOperator, Probe, ProductOperator, flat_params
from edgewatch.monitor.isolation import private_generator, untouched
from edgewatch.monitor.thresholds import uses_preconditioned_sharpness


@dataclasses.dataclass(frozen=True)
class SharpnessEstimate(EigenEstimate):
    preconditioned: bool = False
    loss: float = float("nan")
    """The probe loss at which the Hessian was taken."""


def adam_preconditioner(
    optimizer: torch.optim.Optimizer, params: list[torch.Tensor]
) -> torch.Tensor | None:
    """D = (√v̂ + ε)^(-1/2), flat over ``params``; None before the optimizer's first step.

    Reads ``exp_avg_sq`` and ``step`` from the optimizer's state and ``betas``/``eps``
    from each parameter's group, as torch.optim.Adam/AdamW keep them.
    """
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    pieces = []
    for p in params:
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state or "step" not in state:
            return None
        group = group_of[id(p)]
        beta2, eps = group["betas"][1], group["eps"]
        step = float(state["step"])
        v_hat = state["exp_avg_sq"].detach() / (1.0 - beta2**step)
        if group.get("amsgrad") and "max_exp_avg_sq" in state:
            v_hat = state["max_exp_avg_sq"].detach() / (1.0 - beta2**step)
        pieces.append((v_hat.sqrt() + eps).rsqrt().reshape(-1).to(p.dtype))
    return torch.cat(pieces)


def preconditioner_scale(
    optimizer: torch.optim.Optimizer | None, params: list[torch.Tensor]
) -> torch.Tensor | None:
    """D for Adam-type optimizers with state, else None (the raw Hessian)."""
    if optimizer is None or not uses_preconditioned_sharpness(type(optimizer).__name__):
        return None
    return adam_preconditioner(optimizer, params)


def sharpness(
    model: torch.nn.Module | list[torch.Tensor],
    probe: Probe,
    optimizer: torch.optim.Optimizer | None = None,
    v0: torch.Tensor | None = None,
    *,
    method: Literal["lanczos", "power"] = "lanczos",
    tol: float = 1e-3,
    max_iter: int = 30,
    generator: torch.Generator | None = None,
    gap: float | None = None,
) -> SharpnessEstimate:
    """Top Hessian eigenvalue of ``probe()``'s loss, preconditioned for Adam with state.

    ``v0``: a warm start (the previous estimate's ``vector``); random when None, drawn
    from ``generator`` or else from a private one (never the global RNG), and then run
    for at least ``COLD_EXPLORE`` HVPs (see ``monitor/eigen.py``). ``gap``: the
    previous estimate's ``gap``, which lets a warm start stop after one HVP (see
    :func:`~edgewatch.monitor.eigen.top_eigenvalue`).
    """
    params = flat_params(model)
    scale = preconditioner_scale(optimizer, params)
    module = model if isinstance(model, torch.nn.Module) else None
    with untouched(module, params):
        operator = HessianOperator(params, probe, scale)
        first = params[0]
        min_iter = 1
        if v0 is None or v0.numel() != operator.dim:
            min_iter = min(COLD_EXPLORE, max_iter)
            generator = generator if generator is not None else private_generator()
            v0 = torch.randn(operator.dim, generator=generator, dtype=torch.float64)
        est = top_eigenvalue(
            operator,
            v0.to(device=first.device, dtype=first.dtype),
            method=method,
            tol=tol,
            max_iter=max_iter,
            gap=gap,
            min_iter=min_iter,
        )
    fields = {f.name: getattr(est, f.name) for f in dataclasses.fields(est)}  # no deep copy
    return SharpnessEstimate(**fields, preconditioned=scale is not None, loss=operator.loss)


@dataclasses.dataclass(frozen=True)
class UpdateCurvature:
    curvature: float
    """u·Hu / ‖u‖²: the curvature along the update direction."""
    eta_max: float
    """2(g·u)/(u·Hu): the largest step along u that does not raise the quadratic model
    (inf when u·Hu ≤ 0; negative when u climbs the probe loss)."""
    preconditioned: float = math.nan
    """u·Hu / (u·Pu), P = √v̂ + ε, for Adam-type optimizers with state; else NaN."""


def curvature_along(
    operator: ProductOperator, direction: torch.Tensor, scale: torch.Tensor | None
) -> UpdateCurvature:
    """The quantities along u in ``operator``'s probe graph; one HVP. ``scale`` is
    D = P^(-1/2) when the optimizer is Adam-type (P = D⁻²)."""
    u = direction.to(device=operator.params[0].device, dtype=operator.params[0].dtype)
    uhu = float(torch.dot(u, operator.hessian_times(u)))
    gu = float(torch.dot(operator.gradient, u))
    norm2 = float(torch.dot(u, u))
    curvature = uhu / norm2 if norm2 > 0 else math.nan
    eta_max = 2.0 * gu / uhu if uhu > 0 else math.inf
    preconditioned = math.nan
    if scale is not None:
        upu = float(torch.sum(u * u / (scale.to(u.dtype) ** 2)))
        preconditioned = uhu / upu if upu > 0 else math.nan
    return UpdateCurvature(curvature, eta_max, preconditioned)


def update_curvature(
    model: torch.nn.Module | list[torch.Tensor],
    probe: Probe,
    direction: torch.Tensor,
    optimizer: torch.optim.Optimizer | None = None,
) -> UpdateCurvature:
    """Curvature along ``direction`` u (flat; the step taken was θ ← θ − η·u). One HVP.

    With an Adam-type ``optimizer`` with state, also the preconditioned u·Hu/(u·Pu).
    """
    params = flat_params(model)
    scale = preconditioner_scale(optimizer, params)
    module = model if isinstance(model, torch.nn.Module) else None
    with untouched(module, params):
        operator = HessianOperator(params, probe)
        return curvature_along(operator, direction, scale)
