"""Top eigenvalue of a symmetric operator given only as a mat-vec: Lanczos or power iteration.

Both take ``matvec`` (1-D tensor -> 1-D tensor) and a start vector, so that a caller can
warm-start from the previous estimate's eigenvector: between nearby optimizer steps the
top eigenvector barely moves, and a warm start needs a couple of mat-vecs where a cold
one needs dozens.

- ``lanczos`` (default): Lanczos with full reorthogonalisation (Golub & Van Loan,
  "Matrix Computations", 4th ed., §10.1), reporting the **largest algebraic** Ritz value.
  Its residual ‖Hy − θy‖ comes free from the recurrence as |β_k · s_k| (ibid. §10.1.4),
  so stopping on it costs no extra mat-vec. Full reorthogonalisation keeps the Krylov
  basis orthogonal in floating point; at ≤ 30 vectors it costs little next to an HVP.
- ``power``: power iteration on the Rayleigh quotient. It converges to the eigenvalue
  of **largest magnitude**, which is a large negative one when the Hessian has one (a
  saddle); it is kept as the simple reference the tools in use today run.

Non-convergence is data: the result says ``converged=False`` with its residual, and a
warning is issued; no exception.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Literal

import torch

MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class EigenEstimate:
    value: float
    """The estimate of the top eigenvalue (largest algebraic for Lanczos)."""
    vector: torch.Tensor
    """Unit-norm eigenvector estimate, same device and dtype as the start vector."""
    matvecs: int
    """Operator applications spent."""
    residual: float
    """‖Hv − λv‖ / |λ| at the returned pair."""
    converged: bool
    """Whether ``residual <= tol`` was reached within ``max_iter`` mat-vecs."""


class NotConvergedWarning(RuntimeWarning):
    """An estimate stopped at ``max_iter`` above its tolerance (the result says so too)."""


def _start_vector(v0: torch.Tensor | int, generator: torch.Generator | None) -> torch.Tensor:
    if isinstance(v0, int):
        if v0 < 1:
            raise ValueError(f"v0 as a dimension must be >= 1, got {v0}")
        v0 = torch.randn(v0, generator=generator, dtype=torch.float64)
    if v0.dim() != 1:
        raise ValueError(f"v0 must be a 1-D tensor (or a dimension), got shape {tuple(v0.shape)}")
    norm = torch.linalg.vector_norm(v0)
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("v0 must be finite and non-zero")
    unit: torch.Tensor = v0 / norm
    return unit


def _relative(residual: float, value: float) -> float:
    return residual / abs(value) if value != 0 else math.inf


def top_eigenvalue(
    matvec: MatVec,
    v0: torch.Tensor | int,
    method: Literal["lanczos", "power"] = "lanczos",
    tol: float = 1e-3,
    max_iter: int = 30,
    generator: torch.Generator | None = None,
) -> EigenEstimate:
    """Estimate the top eigenvalue of the symmetric operator ``matvec``.

    ``v0`` is the start vector (a warm start) or the dimension (a random start, drawn
    from ``generator``). Stops when ``‖Hv − λv‖/|λ| <= tol`` or after ``max_iter``
    mat-vecs. See the module docstring for which eigenvalue each method reports.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    start = _start_vector(v0, generator)
    if method == "lanczos":
        result = _lanczos(matvec, start, tol, max_iter)
    elif method == "power":
        result = _power(matvec, start, tol, max_iter)
    else:
        raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
    if not result.converged:
        warnings.warn(
            f"{method} stopped after {result.matvecs} mat-vecs at relative residual "
            f"{result.residual:.2e} > tol {tol:.0e}",
            NotConvergedWarning,
            stacklevel=2,
        )
    return result


def _lanczos(matvec: MatVec, q: torch.Tensor, tol: float, max_iter: int) -> EigenEstimate:
    basis = [q]  # orthonormal Krylov vectors q_1 .. q_k
    alphas: list[float] = []
    betas: list[float] = []
    theta, ritz, residual = 0.0, q, math.inf
    for k in range(1, max_iter + 1):
        w = matvec(basis[-1]).to(basis[-1].dtype)
        alpha = float(torch.dot(w, basis[-1]))
        alphas.append(alpha)
        # Full reorthogonalisation, twice ("twice is enough": Parlett), against every
        # previous vector; this subsumes the three-term recurrence's subtractions.
        Q = torch.stack(basis, dim=1)  # (n, k)
        for _ in range(2):
            w = w - Q @ (Q.T @ w)
        beta = float(torch.linalg.vector_norm(w))
        T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            T += torch.diag(off, 1) + torch.diag(off, -1)
        eigenvalues, eigenvectors = torch.linalg.eigh(T)  # ascending
        theta = float(eigenvalues[-1])
        s = eigenvectors[:, -1]  # (k,)
        residual = _relative(abs(beta * float(s[-1])), theta)
        ritz = Q @ s.to(Q.dtype)
        if residual <= tol or beta <= 1e-12 * max(abs(theta), 1.0) or k == max_iter:
            break  # converged, an invariant subspace was found, or out of budget
        betas.append(beta)
        basis.append(w / beta)
    converged = residual <= tol or beta <= 1e-12 * max(abs(theta), 1.0)
    ritz = ritz / torch.linalg.vector_norm(ritz)
    return EigenEstimate(theta, ritz, len(alphas), residual, converged)


def _power(matvec: MatVec, v: torch.Tensor, tol: float, max_iter: int) -> EigenEstimate:
    value, residual = 0.0, math.inf
    for k in range(1, max_iter + 1):
        w = matvec(v).to(v.dtype)
        value = float(torch.dot(v, w))
        residual = _relative(float(torch.linalg.vector_norm(w - value * v)), value)
        if residual <= tol or k == max_iter:
            return EigenEstimate(value, v, k, residual, residual <= tol)
        v = w / torch.linalg.vector_norm(w)
    raise AssertionError("unreachable")
