"""Curvature against exact answers: dense float64 Hessians and numpy.linalg.eigvalsh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgewatch.monitor import (
    NotConvergedWarning,
    adam_preconditioner,
    sharpness,
    top_eigenvalue,
    update_curvature,
)
from edgewatch_testkit.curvature_problems import make_problem

PROBLEMS = [(k, s) for k in ("mse", "ce") for s in ("init", "trained", "eos")]


def spd_with(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(
        torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64)
    )
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def test_lanczos_reports_the_largest_algebraic_and_power_the_largest_magnitude() -> None:
    spectrum = [-9.0, *np.linspace(-1, 1, 60).tolist(), 5.0]
    a = spd_with(spectrum)
    lanczos = top_eigenvalue(
        lambda v: a @ v,
        62,
        method="lanczos",
        tol=1e-8,
        max_iter=62,
        generator=torch.Generator().manual_seed(1),
    )
    power = top_eigenvalue(
        lambda v: a @ v,
        62,
        method="power",
        tol=1e-6,
        max_iter=500,
        generator=torch.Generator().manual_seed(1),
    )
    assert lanczos.value == pytest.approx(5.0, rel=1e-8) and lanczos.converged
    assert power.value == pytest.approx(-9.0, rel=1e-5)  # the saddle's direction
    assert torch.allclose((a @ lanczos.vector), 5.0 * lanczos.vector, atol=1e-4)
    assert lanczos.error_bound <= 1e-8 and lanczos.matvecs <= 62


def test_lanczos_separates_close_top_eigenvalues() -> None:
    a = spd_with([10.0, 9.98, *np.linspace(0, 5, 100).tolist()])
    est = top_eigenvalue(
        lambda v: a @ v, 102, tol=1e-6, max_iter=60, generator=torch.Generator().manual_seed(0)
    )
    assert est.value == pytest.approx(10.0, rel=1e-9)


def test_a_warm_start_needs_few_matvecs() -> None:
    a = spd_with([10.0, 9.0, *np.linspace(0, 5, 200).tolist()])
    cold = top_eigenvalue(
        lambda v: a @ v, 202, tol=1e-4, max_iter=60, generator=torch.Generator().manual_seed(0)
    )
    nearby = a + 1e-3 * spd_with(np.linspace(-1, 1, 202).tolist(), seed=5)  # the next step's H
    warm = top_eigenvalue(lambda v: nearby @ v, cold.vector, tol=1e-4, max_iter=60, gap=cold.gap)
    assert warm.matvecs <= 3 < cold.matvecs
    assert warm.value == pytest.approx(float(torch.linalg.eigvalsh(nearby)[-1]), rel=1e-6)


def test_non_convergence_is_data_and_a_warning() -> None:
    a = spd_with(np.linspace(0, 10, 300).tolist())
    with pytest.warns(NotConvergedWarning, match="stopped after 2 mat-vecs"):
        est = top_eigenvalue(
            lambda v: a @ v, 300, max_iter=2, generator=torch.Generator().manual_seed(0)
        )
    assert not est.converged and est.matvecs == 2 and est.error_bound > 1e-3


def test_bad_arguments_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="1-D"):
        top_eigenvalue(lambda v: v, torch.ones(2, 2))
    with pytest.raises(ValueError, match="non-zero"):
        top_eigenvalue(lambda v: v, torch.zeros(3))
    with pytest.raises(ValueError, match="method"):
        top_eigenvalue(lambda v: v, 3, method="arnoldi")  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "stage"), PROBLEMS, ids=[f"{k}-{s}" for k, s in PROBLEMS])
def test_sharpness_matches_the_dense_hessian(kind: str, stage: str) -> None:
    problem = make_problem(kind, stage)
    exact = problem.spectrum()[-1]
    est = sharpness(
        problem.model,
        problem.probe,
        tol=1e-6,
        max_iter=120,
        generator=torch.Generator().manual_seed(0),
    )
    assert est.converged and not est.preconditioned
    assert est.value == pytest.approx(exact, rel=1e-6)


def test_sharpness_at_the_edge_of_stability_is_twice_over_the_lr() -> None:
    problem = make_problem("mse", "eos")  # full-batch GD at η = 0.2
    spectrum = problem.spectrum()
    assert spectrum[-2] / spectrum[-1] > 0.98  # the hard case: top two eigenvalues close
    est = sharpness(problem.model, problem.probe, generator=torch.Generator().manual_seed(0))
    assert est.value == pytest.approx(spectrum[-1], rel=1e-3)
    assert est.value * 0.2 == pytest.approx(2.0, rel=0.05)


def test_adam_sharpness_is_preconditioned_from_the_optimizer_state() -> None:
    problem = make_problem("mse", "trained")  # Adam, 300 steps
    assert isinstance(problem.optimizer, torch.optim.Adam)
    params = list(problem.model.parameters())
    d = adam_preconditioner(problem.optimizer, params)
    assert d is not None
    # By hand: D = (sqrt(v / (1 - β2^t)) + ε)^(-1/2), t = 300.
    first = problem.optimizer.state[params[0]]
    by_hand = (first["exp_avg_sq"] / (1 - 0.999**300)).sqrt().add(1e-8).rsqrt().reshape(-1)
    assert torch.allclose(d[: by_hand.numel()], by_hand)
    dense = problem.dense_hessian()
    dn = d.numpy()
    exact = np.linalg.eigvalsh(dn[:, None] * dense * dn[None, :])[-1]
    est = sharpness(
        problem.model,
        problem.probe,
        problem.optimizer,
        tol=1e-6,
        max_iter=150,
        generator=torch.Generator().manual_seed(0),
    )
    assert est.preconditioned and est.converged
    assert est.value == pytest.approx(exact, rel=1e-6)


def test_an_optimizer_without_state_falls_back_to_the_raw_hessian() -> None:
    problem = make_problem("mse", "init")
    fresh = torch.optim.AdamW(problem.model.parameters())
    est = sharpness(problem.model, problem.probe, fresh, generator=torch.Generator().manual_seed(0))
    assert not est.preconditioned
    assert est.value == pytest.approx(problem.spectrum()[-1], rel=1e-3)


def test_curvature_along_the_update_and_its_step_limit() -> None:
    problem = make_problem("mse", "trained")
    dense = problem.dense_hessian()
    params = list(problem.model.parameters())
    loss = problem.probe()
    grads = torch.autograd.grad(loss, params)
    g = torch.cat([x.reshape(-1) for x in grads]).detach()
    u = g + 0.1 * torch.randn(g.shape, generator=torch.Generator().manual_seed(3), dtype=g.dtype)
    result = update_curvature(problem.model, problem.probe, u)
    un, gn = u.numpy(), g.numpy()
    uhu = un @ dense @ un
    assert result.curvature == pytest.approx(uhu / (un @ un), rel=1e-8)
    assert result.eta_max == pytest.approx(2 * (gn @ un) / uhu, rel=1e-8)
    # At η_max the quadratic model along u is back where it started.
    eta = result.eta_max
    assert -eta * (gn @ un) + 0.5 * eta**2 * uhu == pytest.approx(0.0, abs=1e-10)


def test_the_probe_leaves_no_trace_on_the_model() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8),
        torch.nn.BatchNorm1d(8),
        torch.nn.Dropout(0.3),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 1),
    ).double()
    model.train()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before = [b.clone() for b in model.buffers()]
    est = sharpness(
        model,
        lambda: torch.nn.functional.mse_loss(model(x), y),
        tol=1e-6,
        max_iter=80,
        generator=torch.Generator().manual_seed(0),
    )
    # Dropout's mask is drawn once per estimate: Lanczos saw one fixed matrix and converged.
    assert est.converged
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())  # type: ignore[arg-type]
    assert model.training


@pytest.mark.parametrize(("kind", "stage"), PROBLEMS, ids=[f"{k}-{s}" for k, s in PROBLEMS])
def test_the_stop_rule_keeps_the_error_under_one_percent(kind: str, stage: str) -> None:
    problem = make_problem(kind, stage)
    spectrum = problem.spectrum()
    for seed in range(3):
        est = sharpness(problem.model, problem.probe, generator=torch.Generator().manual_seed(seed))
        error = abs(est.value - spectrum[-1]) / spectrum[-1]
        assert est.converged and error <= 0.01, (seed, error, est.matvecs)
        # Stopped on the eigenvalue's error, not the residual: fewer HVPs than a
        # residual of 1e-3 would need, and the bound is of the error's order.
        assert est.error_bound <= 1e-3 and est.residual > est.error_bound


def test_kato_temple_lets_a_warm_start_with_a_known_gap_stop_after_one_matvec() -> None:
    a = spd_with([10.0, 6.0, *np.linspace(0, 5, 100).tolist()])
    exact = torch.linalg.eigh(a)
    v = (
        exact.eigenvectors[:, -1]
        + 0.003 * exact.eigenvectors[:, 0]
        + 0.003 * exact.eigenvectors[:, 1]
    )
    without = top_eigenvalue(lambda x: a @ x, v, tol=1e-4, max_iter=20)
    with_gap = top_eigenvalue(lambda x: a @ x, v, tol=1e-4, max_iter=20, gap=4.0)
    assert with_gap.matvecs == 1 < without.matvecs
    assert with_gap.gap == 4.0 and 0 < with_gap.error_bound <= 1e-4
    assert abs(with_gap.value - 10.0) / 10.0 <= with_gap.error_bound  # the bound holds here
