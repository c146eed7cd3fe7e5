"""Top eigenvalue of a symmetric operator given only as a mat-vec: Lanczos or power iteration.

Both take ``matvec`` (1-D tensor -> 1-D tensor) and a start vector, so that a caller can
warm-start from the previous estimate's eigenvector: between nearby optimizer steps the
top eigenvector barely moves, and a warm start needs a couple of mat-vecs where a cold
one needs dozens.

- ``lanczos`` (default): Lanczos with full reorthogonalisation (Golub & Van Loan,
  "Matrix Computations", 4th ed., §10.1), reporting the **largest algebraic** Ritz value.
  It stops on a bound of the *eigenvalue's* error (see :func:`eigenvalue_error_bound`),
  which needs no extra mat-vec: the residual ‖Hy − θy‖ comes free from the recurrence as
  |β_k · s_k| (ibid. §10.1.4), and the gap from the tridiagonal's Ritz values.
- ``power``: power iteration on the Rayleigh quotient, stopped on the relative residual.
  It converges to the eigenvalue of **largest magnitude**, which is a large negative one
  when the Hessian has one (a saddle); it is kept as the simple reference the tools in use
  today run.

Non-convergence is data: the result says ``converged=False`` with its error bound, and a
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

COLD_EXPLORE = 12
"""Mat-vecs a random start spends before it may stop (``min_iter`` of a cold start).
The error bound says how close θ1 is to *an* eigenvalue; whether a young Krylov space
has seen the top one is another matter: on the exact-Hessian problems, cold starts
stopped by the bound after 4–6 mat-vecs were up to 5% off (bench/RESULTS.md)."""


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
    """Whether ``error_bound <= tol`` was reached within ``max_iter`` mat-vecs."""
    error_bound: float = math.nan
    """Estimated bound of |λ_max − value| / |value| (Lanczos: Kato–Temple, see
    :func:`eigenvalue_error_bound`; power iteration: the relative residual)."""
    gap: float = math.nan
    """The gap estimate δ the bound used: θ1 − θ2 − r2 of the final tridiagonal (capped
    by the ``gap`` passed in, if any), or that ``gap`` when the tridiagonal had one row;
    NaN when none was known."""


class NotConvergedWarning(RuntimeWarning):
    """An estimate stopped at ``max_iter`` above its tolerance (the result says so too)."""


def eigenvalue_error_bound(residual: float, gap: float, value: float) -> float:
    """min(r, r²/δ) / |θ|: a bound of a Ritz value's error, relative to the value.

    ``residual`` r = ‖Hy − θy‖ of a unit Ritz vector y, ``gap`` δ the distance from θ to
    the rest of the spectrum, NaN when unknown. Two classical bounds (Parlett, "The
    Symmetric Eigenvalue Problem", 1998, §4.5 and §10.2): some eigenvalue lies within r
    of θ; and, Kato–Temple, when θ is closer to λ1 than to any other eigenvalue,
    λ1 − θ ≤ r²/δ. The second is far smaller once r ≪ δ: the error of a Ritz value is of
    the order of its residual *squared*, which is why stopping on the residual wastes
    mat-vecs.

    The true δ is θ − λ2, unknown. Lanczos offers θ1 − θ2 of its tridiagonal, and by
    Cauchy interlacing θ2 ≤ λ2, so θ1 − θ2 *over*-estimates the gap and r²/(θ1 − θ2)
    can under-estimate the error. :func:`lanczos` therefore uses θ1 − θ2 − r2 (r2 the
    residual of the second Ritz pair: some eigenvalue lies within r2 of θ2), which
    after two or three steps from a warm start is far smaller than θ1 − θ2, and caps it
    by a gap carried from a previous, better resolved estimate when one is given. It is
    still an estimate, not a guarantee (λ2 may be an eigenvalue the Krylov space has
    not seen at all); the default tolerances are calibrated against exact spectra for
    that reason (bench/RESULTS.md, "Curvature").
    """
    if value == 0:
        return math.inf
    bound = residual
    if gap > 0 and math.isfinite(gap):  # NaN compares False: no gap, no Kato–Temple
        bound = min(residual, residual * residual / gap)
    return bound / abs(value)


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
    *,
    gap: float | None = None,
    min_iter: int | None = None,
) -> EigenEstimate:
    """Estimate the top eigenvalue of the symmetric operator ``matvec``.

    ``v0`` is the start vector (a warm start) or the dimension (a random start, drawn
    from ``generator``). Lanczos stops when its eigenvalue error bound, relative to the
    value, is ``<= tol`` (:func:`eigenvalue_error_bound`); power iteration when its
    relative residual is. Both stop after ``max_iter`` mat-vecs at most. ``gap``: an
    estimate of λ1 − λ2 known beforehand (the previous estimate's ``gap``), which lets
    a warm start stop after one mat-vec; from the second on Lanczos has its own.
    ``min_iter``: mat-vecs before Lanczos may stop; by default ``COLD_EXPLORE`` for a
    random start (``v0`` an int) and 1 for a given one. See the module docstring for
    which eigenvalue each method reports.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if min_iter is None:
        min_iter = min(COLD_EXPLORE, max_iter) if isinstance(v0, int) else 1
    start = _start_vector(v0, generator)
    if method == "lanczos":
        result = lanczos(matvec, start, tol, max_iter, gap, min_iter=min_iter).estimate
    elif method == "power":
        result = _power(matvec, start, tol, max_iter)
    else:
        raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
    if not result.converged:
        warnings.warn(
            f"{method} stopped after {result.matvecs} mat-vecs at relative error bound "
            f"{result.error_bound:.2e} > tol {tol:.0e}",
            NotConvergedWarning,
            stacklevel=2,
        )
    return result


@dataclasses.dataclass(frozen=True)
class LanczosRun:
    """A Lanczos run's estimate and, for a caller that restarts, its Krylov basis."""

    estimate: EigenEstimate
    basis: torch.Tensor
    """(n, k) orthonormal Krylov vectors q_1 .. q_k."""
    products: torch.Tensor | None
    """(n, k) H·q_j as returned by ``matvec`` (when asked for), else None."""
    own_gap: float
    """θ1 − θ2 − r2 of the final tridiagonal, not capped by a given gap (NaN at k = 1)."""
    resolved: bool
    """Whether θ2 is resolved (r2 below half the gap θ1 − θ2), so that ``own_gap`` is
    worth carrying to the next estimate."""


def lanczos(
    matvec: MatVec,
    q: torch.Tensor,
    tol: float,
    max_iter: int,
    gap: float | None = None,
    keep_products: bool = False,
    min_iter: int = 1,
    more: Callable[[int], bool] | None = None,
) -> LanczosRun:
    """Lanczos from the unit vector ``q``; no argument checks and no warning (see
    :func:`top_eigenvalue`, which is the public entry). ``more``, when given, is asked
    after each mat-vec k < ``max_iter`` whether to run another (a caller pricing them
    as they run)."""
    basis = [q]  # orthonormal Krylov vectors q_1 .. q_k
    products: list[torch.Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    given_gap = math.nan if gap is None else gap
    theta, ritz, residual, bound, delta, own_gap = 0.0, q, math.inf, math.inf, math.nan, math.nan
    invariant, r2 = False, math.inf
    for k in range(1, max_iter + 1):
        w = matvec(basis[-1]).to(basis[-1].dtype)
        if keep_products:
            products.append(w)
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
        r = abs(beta * float(s[-1]))  # ‖Hy − θy‖, free from the recurrence
        residual = _relative(r, theta)
        if k >= 2:
            # The gap to the next Ritz value, less that Ritz value's own residual: some
            # eigenvalue lies within r2 of θ2, so θ2 + r2 is a safer stand-in for λ2
            # than θ2, which interlacing puts below it. Capped by a gap given from before.
            r2 = abs(beta * float(eigenvectors[-1, -2]))
            own_gap = theta - float(eigenvalues[-2]) - r2
            delta = min(own_gap, given_gap) if gap is not None else own_gap
        else:
            delta = given_gap
        bound = eigenvalue_error_bound(r, delta, theta)
        ritz = Q @ s.to(Q.dtype)
        invariant = beta <= 1e-12 * max(abs(theta), 1.0)  # an invariant subspace: exact
        if invariant:
            bound = 0.0
        if (bound <= tol and k >= min_iter) or invariant or k == max_iter:
            break
        if more is not None and not more(k):
            break
        betas.append(beta)
        basis.append(w / beta)
    ritz = ritz / torch.linalg.vector_norm(ritz)
    converged = bound <= tol and (len(alphas) >= min_iter or invariant)
    estimate = EigenEstimate(
        theta, ritz, len(alphas), residual, converged, error_bound=bound, gap=delta
    )
    stacked = torch.stack(basis[: len(alphas)], dim=1)
    kept = torch.stack(products, dim=1) if keep_products else None
    resolved = len(alphas) >= 2 and own_gap >= r2  # r2 ≤ (θ1 − θ2)/2
    return LanczosRun(estimate, stacked, kept, own_gap, resolved)


def _power(matvec: MatVec, v: torch.Tensor, tol: float, max_iter: int) -> EigenEstimate:
    value, residual = 0.0, math.inf
    for k in range(1, max_iter + 1):
        w = matvec(v).to(v.dtype)
        value = float(torch.dot(v, w))
        residual = _relative(float(torch.linalg.vector_norm(w - value * v)), value)
        if residual <= tol or k == max_iter:
            return EigenEstimate(value, v, k, residual, residual <= tol, error_bound=residual)
        v = w / torch.linalg.vector_norm(w)
    raise AssertionError("unreachable")
