"""Per-step signals read from the optimizer's own state right after its step: no extra
forward or backward pass, no GPU sync (0-d device tensors, read back in batches).

- ``update_norm`` ‖Δθ‖ of the step just taken, without the weight-decay term: for
  Adam-type optimizers η·‖m̂/(√v̂ + ε)‖, for SGD with momentum η·‖buf‖, for plain SGD
  η·‖g‖ (the gradient the optimizer used, after any clipping). Update-norm spikes
  preceded the loss spikes of Marin 32B (marin-community/marin#1368).
- ``moment_ratio`` (Adam-type only): the largest, over parameter tensors, RMS of g/√v̂,
  the gradient over Adam's second-moment estimate. It sits near 1 while v̂ tracks the
  gradients and jumps when g² outruns v̂; Wortsman et al. 2023 (arXiv 2304.13013, §3.4)
  find loss spikes 1–8 steps after such a jump, and Bai et al. 2025 (arXiv 2506.04805)
  that a v̂ decayed under small gradients precedes Adam's spikes. The worst tensor, not
  the mean: the jump starts in one layer (their patch embedding).

Cost: a handful of fused ``_foreach`` kernels over the optimizer state per step (measured
in ``make bench-client``).
"""

from __future__ import annotations

from typing import Any

import torch

Signals = tuple[torch.Tensor | None, torch.Tensor | None]


class StepSignals:
    """Computes :data:`Signals` for one optimizer after each of its steps."""

    def __init__(self, optimizer: torch.optim.Optimizer, adam: bool) -> None:
        self.optimizer = optimizer
        self.adam = adam
        self._roots: dict[tuple[int, ...], list[float]] = {}

    def __call__(self) -> Signals:
        """(update_norm, moment_ratio) of the step just taken, as 0-d tensors (or None)."""
        squares: list[torch.Tensor] = []
        ratios: list[torch.Tensor] = []
        for group in self.optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr = float(group["lr"])
            if self.adam:
                update_sq, ratio = self._adam(group, params, lr)
                if ratio is not None:
                    ratios.append(ratio)
            else:
                update_sq = self._sgd(group, params, lr)
            if update_sq is not None:
                squares.append(update_sq)
        if not squares:
            return None, None
        device = squares[0].device
        update = torch.stack([s.to(device) for s in squares]).sum().sqrt()
        ratio = torch.stack([r.to(device) for r in ratios]).max() if ratios else None
        return update, ratio

    def _adam(
        self, group: dict[str, Any], params: list[torch.Tensor], lr: float
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        states = [self.optimizer.state.get(p, {}) for p in params]
        if not all("exp_avg" in s and "exp_avg_sq" in s and "step" in s for s in states):
            return None, None
        beta1, beta2 = group["betas"]
        # The step count is a device tensor for fused/capturable Adam: tensor arithmetic,
        # so that reading it costs no sync.
        t = states[0]["step"]
        t = t.float() if isinstance(t, torch.Tensor) else torch.tensor(float(t))
        correction1, root2 = 1.0 - beta1**t, (1.0 - beta2**t).sqrt()
        # torch's Adam: θ ← θ − η·(m/(1−β1ᵗ)) / (√v/√(1−β2ᵗ) + ε)
        denominators = torch._foreach_sqrt([s["exp_avg_sq"] for s in states])
        torch._foreach_div_(denominators, root2)
        torch._foreach_add_(denominators, group["eps"])  # √v̂ + ε
        steps = torch._foreach_div([s["exp_avg"] for s in states], denominators)
        norms = torch.stack(torch._foreach_norm(steps, 2)).float()
        update_sq = (norms * lr / correction1.to(norms.device)).square().sum()
        gradients: list[torch.Tensor] = [p.grad for p in params]  # type: ignore[misc]
        grads = torch._foreach_div(gradients, list(denominators))
        rms = torch._foreach_mul(torch._foreach_norm(grads, 2), self._inverse_roots(params))
        return update_sq, torch.stack(rms).float().max()

    def _sgd(
        self, group: dict[str, Any], params: list[torch.Tensor], lr: float
    ) -> torch.Tensor | None:
        buffers = [self.optimizer.state.get(p, {}).get("momentum_buffer") for p in params]
        grads: list[torch.Tensor] = [p.grad for p in params]  # type: ignore[misc]
        vectors: list[torch.Tensor] = grads
        if group.get("momentum") and all(b is not None for b in buffers):
            vectors = buffers
            if group.get("nesterov"):  # the step is g + β·buf
                vectors = list(torch._foreach_add(grads, vectors, alpha=group["momentum"]))
        norms = torch._foreach_norm(vectors, 2)
        return (torch.stack(norms).float() * lr).square().sum()

    def _inverse_roots(self, params: list[torch.Tensor]) -> list[float]:
        """1/√numel of each tensor (host floats: no device copy), cached per group."""
        key = tuple(id(p) for p in params)
        roots = self._roots.get(key)
        if roots is None:
            roots = self._roots[key] = [p.numel() ** -0.5 for p in params]
        return roots
