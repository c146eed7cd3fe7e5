"""The vectors of an estimate's earlier slices, to restart the next slice from.

The tracker (``monitor/tracking.py``) spreads one Lanczos estimate over several
training steps, a couple of HVPs per step. Each slice sees other parameters, hence
another Hessian, so its Krylov vectors cannot simply extend the previous slice's
tridiagonal. They are kept instead, with their products H·q (each at its own slice's
parameters), and a Rayleigh–Ritz step on all of them picks the vector the next slice
starts from: a thick restart (Wu & Simon 2000, "Thick-restart Lanczos method for large
symmetric eigenvalue problems", SIAM J. Matrix Anal. Appl. 22(2)) across a slowly
moving operator. The mixed products only steer the restart; the value and the stopping
rule come from the last slice alone, at the parameters of then. Without this, a cold
start restarted every two HVPs would be steepest ascent on the Rayleigh quotient, which
needs far more HVPs than Lanczos (bench/RESULTS.md, "Curvature").
"""

from __future__ import annotations

import math

import torch

KEEP = 1e-2
"""An old vector joins the merged basis only where at least this fraction of its norm
lies outside the new slice's span."""


class RitzSubspace:
    """An orthonormal basis (n, m ≤ size) and its products, sorted by Ritz value."""

    def __init__(self, size: int) -> None:
        if size < 2:
            raise ValueError(f"size must be >= 2, got {size}")
        self.size = size
        self.basis: torch.Tensor | None = None  # (n, m)
        self.products: torch.Tensor | None = None  # (n, m)
        self.values: list[float] = []  # Ritz values, ascending

    def add(self, basis: torch.Tensor, products: torch.Tensor) -> None:
        """Merge a slice's orthonormal vectors (n, k) and their products (n, k).

        The new vectors' products are current, so they go first and the old basis is
        orthogonalised against them: along the restart vector, which the new slice
        started from, the stale product is replaced by the fresh one.
        """
        if self.basis is None or self.products is None:
            merged, merged_products = basis, products
        else:
            overlap = basis.T @ self.basis  # (k, m)
            rest = self.basis - basis @ overlap
            rest_products = self.products - products @ overlap
            gram = (rest.T @ rest).double()  # (m, m)
            weights, directions = torch.linalg.eigh(gram)
            # Directions the new slice did not already span, by more than rounding: the
            # Gram of float32 vectors carries noise near 1e-7, and whitening a direction
            # that small multiplies noise by thousands, merge after merge, up to inf.
            keep = weights > KEEP**2
            whiten = (directions[:, keep] / weights[keep].sqrt()).to(basis.dtype)
            merged = torch.cat([basis, rest @ whiten], dim=1)
            merged_products = torch.cat([products, rest_products @ whiten], dim=1)
        projected = (merged.T @ merged_products).double()  # (m, m)
        projected = 0.5 * (projected + projected.T)  # mixed operators: symmetrise
        if not bool(torch.isfinite(projected).all()):
            # Products that overflowed (a run blowing up): the slice alone steers.
            merged, merged_products = basis, products
            projected = (merged.T @ merged_products).double()
            projected = torch.nan_to_num(0.5 * (projected + projected.T))
        values, vectors = torch.linalg.eigh(projected)  # ascending
        top = vectors[:, -self.size :].to(merged.dtype)
        self.basis = merged @ top
        self.products = merged_products @ top
        self.values = values[-self.size :].tolist()

    @property
    def top(self) -> torch.Tensor:
        """The top Ritz vector, unit norm."""
        assert self.basis is not None, "add a slice first"
        vector = self.basis[:, -1]
        unit: torch.Tensor = vector / torch.linalg.vector_norm(vector)
        return unit

    @property
    def second(self) -> torch.Tensor | None:
        """The second Ritz vector, when the subspace has one."""
        if self.basis is None or self.basis.shape[1] < 2:
            return None
        vector = self.basis[:, -2]
        unit: torch.Tensor = vector / torch.linalg.vector_norm(vector)
        return unit

    @property
    def gap(self) -> float:
        """θ1 − θ2 of the mixed projection (NaN under two vectors): a rough gap only."""
        return self.values[-1] - self.values[-2] if len(self.values) >= 2 else math.nan
