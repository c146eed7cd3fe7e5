"""Hessian-vector products by a forward difference of gradients, for the tracker.

    H·v ≈ (∇L(θ + h·v) − ∇L(θ)) / h

Each product is one plain forward and backward of the probe, and no graph is kept
between products (the double backward's of ``monitor/hvp.py`` holds 2–3× the probe's
activations). Alone it is 1.6–2.2× cheaper than a double backward on the benchmark's GPT,
RNN, GRU and CNN, 1.1–1.2× on its millisecond MLPs (bench/RESULTS.md, "Exact and
difference Hessian-vector products"). The price is an error of order h: the truncation error
h/2·∇³L[v, v] against float32's rounding of the perturbed gradient. With a step relative
to the parameters' norm, h = rel_step·(1 + ‖θ‖)/‖v‖, the error on the top direction of
the GPT of ``make bench-client`` after 60 steps was 0.15% at rel_step 1e-5, 1.1% at 1e-4
(truncation) and 0.9% at 1e-6 (rounding); other models want other steps. Whether a
step serves a given model, probe and precision is not assumed: ``SharpnessTracker(...,
hvp="auto")`` compares the difference product with the exact one (``calibrate``) before
it uses any, and keeps to exact products where none agrees (``Trust``). The comparison
runs in the first slice of a warm estimate, on its start vector (the last estimate's top
Ritz vector), whose exact product that slice has made anyway: it costs a gradient per
step tried, and nothing in a run whose budget buys no warm estimate. Cold and restarted
estimates stay exact: a random direction's product is small beside λ_max, and a
difference's rounding error is not. The tracker's default is exact products: side by
side in ``make bench-client`` differences bought 2.0 estimates per 1,000 steps against
2.7, a product in place only 10–30% cheaper and much of an estimate's cost in its
restarts, which stay exact (bench/RESULTS.md).

The parameters are moved for the one forward and backward of a product and then copied
back from a copy taken at construction: bitwise as they were, on the training thread
between steps (where the tracker runs). ``reseed`` runs before each evaluation of the
probe, so that a probe with dropout draws the same masks at θ and at θ + h·v.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

import torch

from edgewatch.monitor.hvp import HessianOperator, Probe, math_attention

REL_STEP = 1e-6
# The relative steps ``calibrate`` tries, in this order, until one agrees. Measured on
# the benchmark families' models after 60 training steps, on their top Ritz vector: the
# best step was 1e-4 for the AdamW MLP (whose preconditioned direction sits on
# coordinates with a tiny second moment, where smaller steps drown in float32's
# rounding), 1e-5 for the heavy-ball CNN, 1e-6 for the GPT; a CNN with BatchNorm and
# max-pooling disagreed by 30% or more at every step.
REL_STEPS = (1e-5, 1e-4, 1e-6)
AGREEMENT = 1e-2  # relative disagreement with the exact product up to which differences serve


def _flat(tensors: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


class DifferenceOperator:
    """The interface of ``hvp.HessianOperator`` (``loss``, ``gradient``, ``matvecs``,
    ``__call__`` = D·H·(D·v), ``hessian_times`` = H·v), by forward differences."""

    def __init__(
        self,
        params: list[torch.Tensor],
        probe: Probe,
        scale: torch.Tensor | None = None,
        reseed: Callable[[], None] = lambda: None,
        rel_step: float = REL_STEP,
        at: tuple[float, torch.Tensor] | None = None,
    ) -> None:
        if not params:
            raise ValueError("no parameters require grad: nothing to differentiate")
        self.params = params
        self.probe = probe
        self.scale = scale
        self.reseed = reseed
        self.rel_step = rel_step
        self.sizes = [p.numel() for p in params]
        self.dim = sum(self.sizes)
        self.matvecs = 0
        self._origin = [p.detach().clone() for p in params]
        # ‖θ‖ from the parameters' own norms: no flat copy of them for one number.
        norms = torch.stack([torch.linalg.vector_norm(o.detach().float()) for o in self._origin])
        self._theta_norm = float(torch.linalg.vector_norm(norms))
        # The loss and gradient at θ, unless the caller has them (the exact operator's).
        self.loss, self._gradient = self._evaluate() if at is None else at

    @property
    def gradient(self) -> torch.Tensor:
        """The probe loss's gradient at θ, flat, detached."""
        return self._gradient

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """D·H·(D·v), or H·v without a scale. One product."""
        if self.scale is None:
            return self.hessian_times(v)
        return self.hessian_times(v.to(self.scale.dtype) * self.scale) * self.scale

    def hessian_times(self, v: torch.Tensor) -> torch.Tensor:
        """H·v, the scale left out. One product: one forward and backward at θ + h·v."""
        v = v.to(device=self._gradient.device, dtype=self._gradient.dtype)
        norm = float(torch.linalg.vector_norm(v))
        self.matvecs += 1
        if norm == 0.0:
            return torch.zeros_like(v)
        h = self.rel_step * (1.0 + self._theta_norm) / norm
        try:
            # Through ``.data``: the parameters' version counters stay as they were, so
            # a graph built before (the exact operator's, or the user's) is not refused
            # afterwards; it sees the same values, bitwise, once they are copied back.
            for p, piece in zip(self.params, torch.split(v, self.sizes), strict=True):
                p.data.add_(piece.view_as(p), alpha=h)
            _, moved = self._evaluate()
        finally:
            for p, origin in zip(self.params, self._origin, strict=True):
                p.data.copy_(origin)
        return (moved - self._gradient) / h

    def _evaluate(self) -> tuple[float, torch.Tensor]:
        self.reseed()
        # The attention kernel of the exact operator: a gradient at θ taken from it, or
        # a comparison with it, then differs by rounding only.
        with math_attention():
            loss = self.probe()
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise TypeError(
                    f"probe must return a scalar loss tensor, got {type(loss).__name__}"
                )
            return float(loss.detach()), _flat(torch.autograd.grad(loss, self.params))


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Whether difference products may stand in for exact ones, and with which step."""

    rel_step: float | None
    """The relative step to use; None: they disagree, keep to exact products."""
    error: float
    """The relative disagreement ‖D·v − H·v‖/‖H·v‖ at ``rel_step``, else the least."""
    evaluations: int
    """Probe gradients the comparison took: one per step tried."""


def calibrate(
    exact: HessianOperator,
    vector: torch.Tensor,
    product: torch.Tensor,
    probe: Probe,
    reseed: Callable[[], None] = lambda: None,
) -> Calibration:
    """Compare difference products with ``exact``'s ``product`` = D·H·D·``vector``, on a
    warm estimate's start vector (the last estimate's top Ritz vector, whose Rayleigh
    quotient is the answer; its exact product is the estimate's first Lanczos product),
    at each of REL_STEPS in turn; keep the first step that agrees to AGREEMENT. Run it
    where the exact operator was built: same parameters, same dropout masks
    (``reseed``), whose gradient at θ it reuses, so that each step tried costs one
    gradient."""
    size = float(torch.linalg.vector_norm(product))
    at = (exact.loss, exact.gradient)
    difference = DifferenceOperator(exact.params, probe, exact.scale, reseed, at=at)
    least = math.inf
    for step in REL_STEPS:
        difference.rel_step = step
        moved = difference(vector).to(product.dtype)
        error = float(torch.linalg.vector_norm(moved - product)) / max(size, 1e-30)
        if error <= AGREEMENT:
            return Calibration(step, error, difference.matvecs)
        least = min(least, error)
    return Calibration(None, least, difference.matvecs)


class Trust:
    """Whether an estimate runs on difference products (``SharpnessTracker(hvp="auto")``):
    once a comparison with exact ones agreed (``calibrate``), until a comparison is due
    again ``refresh`` estimates later (the model, its optimizer's second moment and so
    the best step move with training). Estimates are numbered from 1; with ``hvp``
    "exact" every one is exact and none compares."""

    def __init__(self, hvp: Literal["auto", "exact"], refresh: int) -> None:
        self.hvp = hvp
        self.refresh = refresh
        self.calibration: Calibration | None = None  # the last comparison
        self.compared_at = 0  # the estimate it was made in

    @property
    def step(self) -> float | None:
        """The relative step differences run at, once trusted; None: exact products."""
        if self.hvp != "auto" or self.calibration is None:
            return None
        return self.calibration.rel_step

    def compares(self, number: int) -> bool:
        """Estimate ``number`` compares the products: none compared yet, or ``refresh``
        estimates since."""
        due = self.calibration is None or number - self.compared_at >= self.refresh
        return self.hvp == "auto" and due

    def exact(self, number: int) -> bool:
        """Estimate ``number`` runs on exact products: until a comparison trusts
        differences, and at each comparison."""
        return self.step is None or self.compares(number)

    def compared(self, calibration: Calibration, number: int) -> None:
        """Estimate ``number`` made the comparison ``calibration``."""
        self.calibration, self.compared_at = calibration, number
