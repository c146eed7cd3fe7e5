"""Critical sharpness: the stability of the step actually taken, from forward passes only.

Kalra et al. 2026 (arXiv 2601.16979) define η_c, the smallest step along the update
direction that raises the loss, and the critical sharpness λ_c = 2/η_c, read against
the same 2/η-type threshold as λ_max: on a quadratic, φ(η) = L(θ − η·u) − L(θ) =
−η·gᵀu + η²·uᵀHu/2 is zero again at η_c = 2·gᵀu/(uᵀHu), the η_max of
``monitor/curvature.py``. It needs no Hessian-vector product, so it works where double
backward does not (fused attention kernels, some custom CUDA ops), and it costs a
handful of forwards: cheap enough to fill the gaps between Lanczos estimates.

Search: one forward at θ for L(θ); then from the current LR, doubling until the loss
rises (or halving until it does not), which brackets η_c; then bisection. The value
returned is the root, within the final bracket, of the parabola through the three
points (0, L(θ)), (lower, φ), (upper, φ), which is exact on a quadratic.

The parameters are written θ − η·u from a saved copy for each trial and copied back
bitwise at the end (never restored by subtraction, which rounds). Each forward starts
from the same global RNG state, so that a probe in ``train()`` mode sees one dropout
mask throughout (φ is then one function of η), and that state, the buffers and
``.grad`` are as before afterwards.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from edgewatch.monitor.hvp import Probe, flat_params
from edgewatch.monitor.isolation import rng_preserved, untouched


@dataclasses.dataclass(frozen=True)
class CriticalSharpness:
    eta_c: float
    """The smallest step along −u found to raise the probe loss (inf: none found)."""
    lambda_c: float
    """2/η_c."""
    forwards: int
    """Forward passes spent, the one at the current parameters included."""
    lower: float
    """The largest step tried that did not raise the loss (0 when none)."""
    upper: float
    """The smallest step tried that did (inf when none)."""
    loss: float
    """The probe loss at the current parameters."""
    lr: float
    """The LR the search started from."""


def critical_sharpness(
    model: torch.nn.Module | list[torch.Tensor],
    probe: Probe,
    direction: torch.Tensor,
    lr: float,
    *,
    max_forwards: int = 10,
) -> CriticalSharpness:
    """η_c and λ_c = 2/η_c along −``direction`` (the update u of θ ← θ − η·u).

    ``lr``: where the search starts (the LR in force). ``max_forwards`` >= 3 bounds the
    forward passes. Runs under ``torch.no_grad``; the model comes back bitwise as it was.
    """
    if max_forwards < 3:
        raise ValueError(f"max_forwards must be >= 3, got {max_forwards}")
    if not lr > 0 or not math.isfinite(lr):
        raise ValueError(f"lr must be finite and > 0, got {lr}")
    params = flat_params(model)
    sizes = [p.numel() for p in params]
    if direction.dim() != 1 or direction.numel() != sum(sizes):
        raise ValueError(
            f"direction must be flat with {sum(sizes)} entries, got shape {tuple(direction.shape)}"
        )
    module = model if isinstance(model, torch.nn.Module) else None
    pieces = [
        chunk.view_as(p).to(device=p.device, dtype=p.dtype)
        for chunk, p in zip(torch.split(direction.detach(), sizes), params, strict=True)
    ]
    saved = [p.detach().clone() for p in params]
    with torch.no_grad(), untouched(module, params):
        try:
            search = _Search(params, saved, pieces, probe)
            return search.run(lr, max_forwards)
        finally:
            for p, copy in zip(params, saved, strict=True):
                p.copy_(copy)


class _Search:
    def __init__(
        self,
        params: list[torch.Tensor],
        saved: list[torch.Tensor],
        pieces: list[torch.Tensor],
        probe: Probe,
    ) -> None:
        self.params, self.saved, self.pieces, self.probe = params, saved, pieces, probe
        self.forwards = 0
        self.base = self._loss_at(0.0)

    def _loss_at(self, eta: float) -> float:
        for p, copy, u in zip(self.params, self.saved, self.pieces, strict=True):
            p.copy_(copy)
            if eta != 0.0:
                p.sub_(u, alpha=eta)  # from the saved copy: θ − η·u
        with rng_preserved(self.params):  # the same dropout mask for every trial
            loss = float(self.probe().detach())
        self.forwards += 1
        return loss

    def _rises(self, value: float) -> bool:
        return not math.isfinite(value) or value > self.base

    def run(self, lr: float, max_forwards: int) -> CriticalSharpness:
        lower, upper = 0.0, math.inf
        f_lower, f_upper = self.base, math.inf
        eta = lr
        # Bracket: double until the loss rises, or halve until it does not.
        while self.forwards < max_forwards:
            value = self._loss_at(eta)
            if self._rises(value):
                upper, f_upper = eta, value
                if lower > 0.0:
                    break
                eta /= 2.0
            else:
                lower, f_lower = eta, value
                if math.isfinite(upper):
                    break
                eta *= 2.0
        # Bisect the bracket with what is left.
        while self.forwards < max_forwards and lower > 0.0 and math.isfinite(upper):
            middle = 0.5 * (lower + upper)
            value = self._loss_at(middle)
            if self._rises(value):
                upper, f_upper = middle, value
            else:
                lower, f_lower = middle, value
        eta_c = self._interpolate(lower, f_lower, upper, f_upper)
        lambda_c = 2.0 / eta_c if eta_c > 0 else math.inf
        return CriticalSharpness(eta_c, lambda_c, self.forwards, lower, upper, self.base, lr)

    def _interpolate(self, lower: float, f_lower: float, upper: float, f_upper: float) -> float:
        """Root of the parabola through (0, base), (lower, ·), (upper, ·), in the bracket."""
        if not math.isfinite(upper):
            return math.inf
        if lower <= 0.0 or not math.isfinite(f_upper):
            return upper
        # φ(η) = a·η + b·η² through the two points (φ measured from the base loss).
        p_lo, p_up = f_lower - self.base, f_upper - self.base
        b = (p_up / upper - p_lo / lower) / (upper - lower)
        a = p_lo / lower - b * lower
        if b > 0 and a < 0:
            root = -a / b
            if lower <= root <= upper:
                return root
        return 0.5 * (lower + upper)
