"""Sharpness tracked through training, a few HVPs per training step.

An estimate is spread over several steps so that none of them stalls: each call to
:meth:`SharpnessTracker.advance` builds the probe graph once at the current parameters
and runs at most ``hvps_per_step`` Lanczos HVPs, restarted from the running Ritz vector
(chosen by a Rayleigh–Ritz step over the earlier slices' vectors, ``monitor/subspace.py``).
The estimate finishes when one slice meets the stopping rule; the value reported is that
slice's, at the parameters of then.

Stopping: the forecast multiplies λ_max by a planned LR and compares it with a threshold
``margin`` = 1.5 above the edge, so it needs λ_max to a few percent, not to 0.3% (where
most small-run estimates used to end at the HVP cap, unconverged). An estimate stops on
the first of: the error bound min(r, r²/δ)/θ ≤ ``tol`` (``monitor/eigen.py``: the
residual alone bounds the distance to *some* eigenvalue, |λ − θ| ≤ ‖r‖ for a symmetric
operator, Parlett 1998 §4.5; Kato–Temple adds r²/δ near the top); or **stagnation**, the
Ritz value moving less than ``STALL`` (relative) over ``STALL_SLICES`` successive slices
once explored. Where the top eigenvalues cluster the residual stays large (the Ritz
vector mixes the cluster) while θ, a lower bound of λ_max that rises as the Krylov space
grows, has stopped rising: the cluster's top is then the answer to the forecast's
precision. ``stopped`` says which rule ended it; at the HVP cap the estimate is reported
with ``converged=False`` and its bound, as data.

Policy:

- **Warm start.** An estimate starts from the previous one's vector, with the gap
  carried from it, so that one HVP can end it by the Kato–Temple bound
  (``monitor/eigen.py``). The carried gap is replaced when a slice resolves its second
  Ritz value (r2 ≤ (θ1 − θ2)/2), otherwise it only shrinks.
- **When the spectrum reorders**, a warm start can sit on a former top eigenvector, now
  a lower one, and converge to it. Ritz values are lower bounds of λ_max, so a *rise* is
  never such an artefact; a drop below (1 − JUMP) of the last value is suspect, and so
  is a warm estimate that has not met the rule after ``WARM_HVPS``, where the cap leaves
  a restart room to explore. Either starts again from the previous vector's
  neighbourhood: the previous top two Ritz vectors plus a random vector of the same
  weight (bench/RESULTS.md compares this with a plain random restart). The random
  vectors come from the tracker's own generator.
- **Difference products** (opt-in, ``hvp="auto"``): a warm estimate runs on differences
  of gradients once a comparison with the exact product, in the first slice of a warm
  estimate on its start vector, agreed (``monitor/difference.py``: ``calibrate`` and
  ``Trust``); cold and restarted estimates stay exact. Not the default: they bought no
  more estimates in ``make bench-client`` (bench/RESULTS.md).
- **Directional signals.** The slice that finishes an estimate spends one more HVP, in
  the same probe graph, on the curvature along the optimizer's last update and the step
  limit along it (``monitor/direction.py``, ``monitor/curvature.py``).

Zero perturbation: every probe runs with the global RNG states and the model's buffers
put back (``monitor/isolation.py``); ``.grad`` is not written.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Literal

import torch

from edgewatch.monitor.curvature import (
    UpdateCurvature,
    curvature_along,
    preconditioner_scale,
)
from edgewatch.monitor.difference import Calibration, DifferenceOperator, Trust, calibrate
from edgewatch.monitor.direction import update_direction
from edgewatch.monitor.eigen import COLD_EXPLORE, LanczosRun, lanczos
from edgewatch.monitor.hvp import HessianOperator, ProductOperator, flat_params
from edgewatch.monitor.isolation import private_generator, seed_globals, untouched
from edgewatch.monitor.progress import Progress, Stop, TrackedEstimate, unit_kind
from edgewatch.monitor.subspace import RitzSubspace

TOL = 2e-2
"""Default relative error bound at which an estimate stops: the forecast's precision
(a few percent; bench/RESULTS.md, "Curvature", measures the errors that result)."""
COLD_TOL = 3e-3  # the bound a cold or restarted estimate stops at (see advance())
STALL = 3e-3  # relative Ritz-value change per slice below which an estimate has stagnated
STALL_SLICES = 3  # successive slices (6 HVPs at 2 a step) that must each move less than STALL
JUMP = 0.5  # a warm estimate below (1 − JUMP) × the last value is suspect
WARM_HVPS = 8  # a warm estimate not done after this many HVPs restarts
SUBSPACE = 8  # Ritz vectors kept across the slices of one estimate
REFRESH = 8  # every REFRESH-th estimate starts from the neighbourhood, not warm


class SharpnessTracker:
    """λ_max of ``probe``'s loss (λ_max(P⁻¹H) for Adam-type ``optimizer`` with state),
    tracked across training steps at most ``hvps_per_step`` HVPs per step.

    ``model``: the module (buffers restored after each probe) or a list of parameters.
    ``probe``: zero-argument callable returning a scalar loss on a fixed batch; it runs in
    whatever mode the model is in. ``tol``: the relative eigenvalue-error bound at which
    an estimate stops. ``max_hvps``: at most this many Lanczos HVPs per estimate, then it
    finishes with ``converged=False``. ``seed``: of the tracker's own generator (from the
    OS's entropy when None). ``restart``: how a warm start that failed starts again,
    "neighbourhood" (default) or "random". ``hvp``: "exact" (default) uses double
    backward for every product; "auto" runs warm estimates on differences of gradients
    (``monitor/difference.py``) once a comparison on a warm start vector showed them to
    agree, compared again REFRESH estimates later.
    """

    def __init__(
        self,
        model: torch.nn.Module | list[torch.Tensor],
        probe: Callable[[], torch.Tensor],
        optimizer: torch.optim.Optimizer | None = None,
        *,
        tol: float = TOL,
        hvps_per_step: int = 2,
        max_hvps: int = 30,
        seed: int | None = None,
        restart: Literal["neighbourhood", "random"] = "neighbourhood",
        hvp: Literal["auto", "exact"] = "exact",
    ) -> None:
        if hvps_per_step < 2:
            # One HVP a slice gives each slice a one-vector Krylov space: the subspace
            # restart then only ever sees the start vectors and never converges.
            raise ValueError(f"hvps_per_step must be >= 2, got {hvps_per_step}")
        if max_hvps < hvps_per_step:
            raise ValueError(f"max_hvps ({max_hvps}) must be >= hvps_per_step ({hvps_per_step})")
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        if restart not in ("neighbourhood", "random"):
            raise ValueError(f"restart must be 'neighbourhood' or 'random', got {restart!r}")
        if hvp not in ("auto", "exact"):
            raise ValueError(f"hvp must be 'auto' or 'exact', got {hvp!r}")
        self.params = flat_params(model)
        if not self.params:
            raise ValueError("no parameters require grad: nothing to differentiate")
        self.module = model if isinstance(model, torch.nn.Module) else None
        self.probe = probe
        self.optimizer = optimizer
        self.tol = tol
        self.hvps_per_step = hvps_per_step
        self.max_hvps = max_hvps
        self.restart = restart
        self.trust = Trust(hvp, REFRESH)  # when estimates run on difference products
        # Probe evaluations of the last slice by kind, "exact" (the probe graph and its
        # double-backward products) and "difference" (plain gradients): the client
        # prices the two apart.
        self.slice_units: dict[str, int] = {}
        self.generator = private_generator(seed)  # start vectors
        # The probe's seeds come from a generator of their own: the start vectors drawn
        # for a given ``seed`` stay what they were without it.
        self.probe_seeds = private_generator(None if seed is None else seed + 1)
        self.hvps_total = 0
        self.estimates = 0  # started
        self.last: TrackedEstimate | None = None
        self._progress: Progress | None = None
        self._second: torch.Tensor | None = None  # second Ritz vector of the last estimate
        self._gap: float | None = None  # carried from estimate to estimate

    @property
    def in_progress(self) -> bool:
        """An estimate has started and not finished."""
        return self._progress is not None

    @property
    def next_exact(self) -> bool:
        """The next slice's products are exact (double backward), not differences."""
        if self._progress is not None:
            return self._progress.exact
        return self.last is None or self.trust.exact(self.estimates + 1)

    @property
    def calibration(self) -> Calibration | None:
        """The last comparison of difference and exact products (``hvp="auto"``)."""
        return self.trust.calibration

    @property
    def difference_step(self) -> float | None:
        """The relative step warm estimates run difference products at, once a comparison
        trusts them (``hvp="auto"``); None: exact products."""
        return self.trust.step

    @property
    def compares_next(self) -> bool:
        """The estimate under way (or the next) compares difference products with exact
        ones (``difference.calibrate``) in a slice still to come."""
        if self._progress is not None:
            return self._progress.compare
        return self.last is not None and self.trust.compares(self.estimates + 1)

    def advance(self, more: Callable[[int], bool] | None = None) -> TrackedEstimate | None:
        """One slice at the current parameters; the finished estimate, or None. ``more``:
        asked after each HVP of the slice whether to run another (``eigen.lanczos``); it
        may lower ``max_hvps``, read when the slice ends."""
        if self._progress is None:
            self._progress = self._begin()
        progress = self._progress
        with untouched(self.module, self.params):
            seed_globals(progress.probe_seed, self.params)
            scale = preconditioner_scale(self.optimizer, self.params)
            operator = self._operator(progress, scale)
            kind = unit_kind(progress.exact)
            self.slice_units = {kind: 1}  # the probe graph, or the gradient at θ
            budget = min(self.hvps_per_step, self.max_hvps - progress.matvecs)
            start = progress.vector.to(device=self.params[0].device, dtype=self.params[0].dtype)
            # A restarted estimate explores first: the bound says how close θ is to *an*
            # eigenvalue, not whether a young Krylov space has seen the top one yet.
            explored = not progress.restarted or progress.matvecs - progress.since >= COLD_EXPLORE
            # A cold (or restarted) estimate is held to COLD_TOL: its bound says how near θ
            # is to *an* eigenvalue, and a loose one let cold starts stop on a lower one
            # (13% low on the dropout probe of tests/test_tracking.py). A warm start
            # begins on the top vector, where the forecast's few percent suffice.
            tol = (min(self.tol, COLD_TOL) if progress.restarted else self.tol) if explored else 0.0
            run = lanczos(operator, start, tol, budget, progress.gap, True, more=more)
            self.hvps_total += run.estimate.matvecs
            self.slice_units[kind] += run.estimate.matvecs
            if progress.compare and isinstance(operator, HessianOperator):
                self._compare(run, operator, progress)
            progress.matvecs += run.estimate.matvecs
            progress.slices += 1
            self._learn_gap(run, progress)
            if run.estimate.converged and self._suspect(run, progress):
                self._progress = self._restarted(progress)
                return None
            progress.values.append(run.estimate.value)
            stalled = explored and _stagnant(progress.values)
            out_of_budget = progress.matvecs >= self.max_hvps
            if run.estimate.converged or stalled or out_of_budget:
                stop: Stop = (
                    "bound" if run.estimate.converged else "stagnation" if stalled else "budget"
                )
                return self._finish(run, progress, operator, scale, stop)
        # A restart with no room under the cap to explore would end there lower than
        # the warm estimate it replaced (bench/RESULTS.md, "A restart it cannot afford").
        room = self.max_hvps - progress.matvecs >= COLD_EXPLORE
        if not progress.restarted and progress.matvecs >= WARM_HVPS and room:
            self._progress = self._restarted(progress)
            return None
        assert run.products is not None
        progress.subspace.add(run.basis, run.products)
        progress.vector = progress.subspace.top
        return None

    def _operator(self, progress: Progress, scale: torch.Tensor | None) -> ProductOperator:
        step = self.difference_step
        if progress.exact or step is None:
            return HessianOperator(self.params, self.probe, scale)
        seed = progress.probe_seed
        return DifferenceOperator(
            self.params,
            self.probe,
            scale,
            reseed=lambda: seed_globals(seed, self.params),
            rel_step=step,
        )

    def _begin(self) -> Progress:
        self.estimates += 1
        seed = int(torch.randint(2**62, (), generator=self.probe_seeds))
        if self.last is None:  # the first estimate: cold
            return Progress(self._random(), None, True, RitzSubspace(SUBSPACE), probe_seed=seed)
        exact = self.trust.exact(self.estimates)
        compare = self.trust.compares(self.estimates)
        warm = Progress(
            self.last.vector,
            self._gap,
            False,
            RitzSubspace(SUBSPACE),
            probe_seed=seed,
            exact=exact,
            compare=compare,
        )
        if REFRESH and self.estimates % REFRESH == 0:
            return self._restarted(warm)  # compares at the next warm start
        return warm

    def _random(self) -> torch.Tensor:
        dim = sum(p.numel() for p in self.params)
        v = torch.randn(dim, generator=self.generator, dtype=torch.float64)
        unit: torch.Tensor = v / torch.linalg.vector_norm(v)
        return unit

    def _restarted(self, progress: Progress) -> Progress:
        """Start again, keeping the HVPs and slices spent: from the running vector plus
        the second Ritz vector plus a random vector, all of unit norm (or at random), on
        exact products."""
        vector = self._random()
        if self.restart == "neighbourhood":
            second = progress.subspace.second
            second = second if second is not None else self._second
            for known in (progress.vector, second):
                if known is not None:
                    vector = vector + known.to(device="cpu", dtype=vector.dtype)
        vector = vector / torch.linalg.vector_norm(vector)
        subspace = RitzSubspace(SUBSPACE)
        spent = progress.matvecs
        return Progress(
            vector,
            None,
            True,
            subspace,
            spent,
            progress.slices,
            spent,
            progress.probe_seed,
            # Exact from here: a random direction's product is small beside λ_max, and a
            # difference's error (of float32's rounding, not relative to the product) is
            # not, so a Krylov space grown from one stays noisy and does not converge.
            exact=True,
        )

    def _suspect(self, run: LanczosRun, progress: Progress) -> bool:
        """A warm estimate that dropped by more than JUMP: maybe a former top vector."""
        if progress.restarted or self.last is None or self.last.value <= 0:
            return False
        return run.estimate.value < (1.0 - JUMP) * self.last.value

    def _learn_gap(self, run: LanczosRun, progress: Progress) -> None:
        if run.resolved:
            progress.gap = run.own_gap
        elif run.estimate.matvecs >= 2 and math.isfinite(run.own_gap) and run.own_gap > 0:
            progress.gap = run.own_gap if progress.gap is None else min(progress.gap, run.own_gap)

    def _compare(self, run: LanczosRun, operator: HessianOperator, progress: Progress) -> None:
        """Compare difference products with the exact one on the warm start vector (the
        last estimate's top Ritz vector, the first Lanczos vector: its exact product is
        already made), and go on with differences for the rest of the estimate if they
        agree. A cold or restarted start is no place for it: a random direction's product
        is small beside λ_max, and a difference's rounding error is not."""
        assert run.products is not None
        seed = progress.probe_seed
        found = calibrate(
            operator,
            run.basis[:, 0],
            run.products[:, 0],
            self.probe,
            lambda: seed_globals(seed, self.params),
        )
        self.trust.compared(found, self.estimates)
        self.hvps_total += found.evaluations
        self.slice_units["difference"] = found.evaluations
        progress.compare = False
        progress.exact = self.difference_step is None

    def _finish(
        self,
        run: LanczosRun,
        progress: Progress,
        operator: ProductOperator,
        scale: torch.Tensor | None,
        stopped: Stop,
    ) -> TrackedEstimate:
        along = self._along(operator, scale)
        est = run.estimate
        exact = isinstance(operator, HessianOperator)
        tracked = TrackedEstimate(
            value=est.value,
            vector=est.vector.detach(),
            matvecs=progress.matvecs,
            residual=est.residual,
            converged=stopped != "budget",
            error_bound=est.error_bound,
            gap=est.gap,
            preconditioned=scale is not None,
            loss=operator.loss,
            slices=progress.slices,
            restarted=progress.restarted,
            update_curvature=along.curvature,
            update_curvature_preconditioned=along.preconditioned,
            eta_max=along.eta_max,
            stopped=stopped,
            exact=exact,
        )
        if run.products is not None:
            progress.subspace.add(run.basis, run.products)
        self._second = progress.subspace.second
        self._gap = progress.gap
        self.last = tracked
        self._progress = None
        return tracked

    def _along(self, operator: ProductOperator, scale: torch.Tensor | None) -> UpdateCurvature:
        u = update_direction(self.optimizer, self.params) if self.optimizer is not None else None
        if u is None or not bool(torch.isfinite(u).all()) or not bool(u.any()):
            return UpdateCurvature(math.nan, math.nan)
        self.hvps_total += 1
        kind = unit_kind(isinstance(operator, HessianOperator))
        self.slice_units[kind] = self.slice_units.get(kind, 0) + 1
        return curvature_along(operator, u, scale)


def _stagnant(values: list[float]) -> bool:
    """θ moved less than STALL (relative) in each of the last STALL_SLICES slices."""
    if len(values) <= STALL_SLICES:
        return False
    recent = values[-STALL_SLICES - 1 :]
    return all(abs(b - a) <= STALL * max(abs(b), 1e-30) for a, b in itertools.pairwise(recent))
