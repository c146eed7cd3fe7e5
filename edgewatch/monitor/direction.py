"""The direction of the last update an optimizer took, from its own state.

Every optimizer here steps θ ← θ − η·u; ``update_direction`` returns u, flat over the
parameters, as torch's implementations computed it at their last ``step()``:

- Adam / AdamW: u = m̂ / (√v̂ + ε), m̂ = m/(1 − β1^t), v̂ = v/(1 − β2^t) (v the running
  maximum with ``amsgrad``), the bias corrections of ``torch.optim.Adam``'s update. The
  decoupled weight decay of AdamW (θ ← θ·(1 − ηλ)) is not part of u: it is not a step
  along the loss's curvature.
- SGD with momentum β: its momentum buffer (the weight decay torch folds into the
  gradient included), or g + β·buf with ``nesterov``, g the current ``.grad``.
- SGD without momentum: the current ``.grad``.

Along u the quantities the stability predictor reads are the curvature uᵀHu/‖u‖², for
Adam the preconditioned uᵀHu/(uᵀPu) (P = √v̂ + ε; Bai et al. 2025, arXiv 2506.04805:
a spike starts when the curvature along the update exceeds the threshold that bounds
λ_max(P⁻¹H)), and the step η_max = 2·gᵀu/(uᵀHu) beyond which the local quadratic
model rises (see ``monitor/curvature.py``).
"""

from __future__ import annotations

from typing import Any

import torch

_ADAM = (torch.optim.Adam, torch.optim.AdamW)


def update_direction(
    optimizer: torch.optim.Optimizer, params: list[torch.Tensor]
) -> torch.Tensor | None:
    """u of the last step (θ ← θ − η·u), flat over ``params``; None when the optimizer
    is of another kind or its state is missing (before the first step, a parameter it
    does not hold, ``.grad`` already set to None where u needs it)."""
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    pieces = []
    for p in params:
        group = group_of.get(id(p))
        if group is None:
            return None
        state = optimizer.state.get(p, {})
        if isinstance(optimizer, _ADAM):
            piece = _adam(state, group)
        elif isinstance(optimizer, torch.optim.SGD):
            piece = _sgd(p, state, group)
        else:
            return None
        if piece is None:
            return None
        pieces.append(piece.detach().reshape(-1).to(p.dtype))
    return torch.cat(pieces) if pieces else None


def _adam(state: dict[str, torch.Tensor], group: dict[str, Any]) -> torch.Tensor | None:
    if "exp_avg" not in state or "exp_avg_sq" not in state or "step" not in state:
        return None
    beta1, beta2 = group["betas"]
    eps = float(group["eps"])
    step = float(state["step"])
    second = state["exp_avg_sq"]
    if group.get("amsgrad") and "max_exp_avg_sq" in state:
        second = state["max_exp_avg_sq"]
    # As torch's single-tensor Adam: denom = √v / √(1 − β2^t) + ε, step η/(1 − β1^t).
    denom = second.sqrt() / (1.0 - beta2**step) ** 0.5 + eps
    u: torch.Tensor = (state["exp_avg"] / (1.0 - beta1**step)) / denom
    return u


def _sgd(
    p: torch.Tensor, state: dict[str, torch.Tensor], group: dict[str, Any]
) -> torch.Tensor | None:
    momentum = float(group.get("momentum", 0.0))
    if momentum == 0.0:
        return p.grad
    buffer = state.get("momentum_buffer")
    if buffer is None:
        return None
    if group.get("nesterov"):
        if p.grad is None:
            return None
        return p.grad + momentum * buffer
    return buffer
