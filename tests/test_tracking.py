"""The tracker as training runs it: zero perturbation, slices, stop rule, signals."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from edgewatch.monitor import (
    SharpnessTracker,
    critical_sharpness,
    sharpness,
    update_curvature,
    update_direction,
)
from edgewatch.monitor.tracking import TOL
from edgewatch_testkit.curvature_problems import make_problem, spectrum_with


def dropout_bn_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.Dropout(0.3),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 1),
    )


def train(steps: int, track_every: int | None) -> tuple[list[float], list[torch.Tensor], tuple]:
    """A seeded run drawing batches, dropout masks and Python/NumPy numbers from the
    global generators, with or without a tracker advanced every few steps."""
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    model = dropout_bn_model()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data_x, data_y = torch.randn(256, 6), torch.randn(256, 1)
    probe_x, probe_y = data_x[:32], data_y[:32]
    tracker = None
    if track_every is not None:
        tracker = SharpnessTracker(
            model, lambda: torch.nn.functional.mse_loss(model(probe_x), probe_y), opt, seed=3
        )
    losses = []
    for step in range(steps):
        index = torch.randint(0, 256, (32,))  # the global torch generator
        noise = random.random() + float(np.random.rand())  # Python's and NumPy's
        loss = torch.nn.functional.mse_loss(model(data_x[index]), data_y[index]) * (1 + noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if tracker is not None and step % track_every == 0:
            tracker.advance()
    if tracker is not None:
        assert tracker.hvps_total > 0 and tracker.last is not None
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    return losses, [t.detach().clone() for t in model.state_dict().values()], states


def test_a_run_with_the_tracker_is_bitwise_the_run_without_it() -> None:
    bare_losses, bare_state, bare_rng = train(200, None)
    losses, state, rng = train(200, 3)
    assert losses == bare_losses  # floats compared exactly
    assert all(torch.equal(a, b) for a, b in zip(bare_state, state, strict=True))
    assert torch.equal(bare_rng[0], rng[0])
    assert bare_rng[1] == rng[1]
    assert np.array_equal(bare_rng[2], rng[2])


def test_sharpness_without_a_generator_leaves_the_global_rng_alone() -> None:
    problem = make_problem("mse", "init")
    torch.manual_seed(5)
    before = torch.get_rng_state()
    sharpness(problem.model, problem.probe)
    assert torch.equal(torch.get_rng_state(), before)


def test_an_estimate_spans_slices_of_at_most_hvps_per_step() -> None:
    problem = make_problem("ce", "trained")
    exact = problem.spectrum()[-1]
    tracker = SharpnessTracker(problem.model, problem.probe, hvps_per_step=2, seed=0)
    results, spent = [], []
    while len(results) < 3:  # a cold estimate, then warm ones at the same parameters
        before = tracker.hvps_total
        est = tracker.advance()
        spent.append(tracker.hvps_total - before)
        if est is not None:
            results.append(est)
    assert max(spent) <= 2
    cold, warm = results[0], results[2]
    assert cold.restarted and cold.slices > 1 and cold.converged
    assert not warm.restarted and warm.matvecs <= 2 and warm.slices == 1
    for est in results:
        assert est.value == pytest.approx(exact, rel=0.01)
        assert est.error_bound <= TOL and not tracker.in_progress
    assert math.isnan(cold.update_curvature)  # no optimizer: no direction


def test_a_probe_with_dropout_sees_one_mask_per_estimate_and_converges() -> None:
    # Each slice runs the probe again; a new dropout mask in each would make every slice
    # work on another operator, and the estimate would run to max_hvps unconverged.
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 1)
    )
    model.train()
    x, y = torch.randn(64, 6), torch.randn(64, 1)
    tracker = SharpnessTracker(
        model, lambda: torch.nn.functional.mse_loss(model(x), y), hvps_per_step=2, seed=1
    )
    estimates = []
    while len(estimates) < 3:
        torch.randint(0, 64, (16,))  # the training step between slices draws from torch's RNG
        est = tracker.advance()
        if est is not None:
            estimates.append(est)
    for est in estimates:
        assert est.converged and est.matvecs < tracker.max_hvps
    # A new mask for each estimate (an average over masks as time goes), one within it.
    assert max(e.matvecs for e in estimates[1:]) < estimates[0].matvecs


def test_warm_estimates_follow_a_moving_spectrum_within_one_percent() -> None:
    # Exact operators: the top eigenvalue drifts and the spectrum below moves.
    tracker_params = [torch.zeros(120, dtype=torch.float64, requires_grad=True)]
    step = {"t": 0}

    def matrix() -> torch.Tensor:
        t = step["t"]
        return spectrum_with([10.0 + 0.05 * t, 7.0, *np.linspace(0, 5, 118).tolist()], 0, t)

    def probe() -> torch.Tensor:
        (x,) = tracker_params
        return 0.5 * x @ matrix() @ x

    tracker = SharpnessTracker(tracker_params, probe, seed=1)
    finished = []
    for t in range(60):
        step["t"] = t
        est = tracker.advance()
        if est is not None:
            exact = float(torch.linalg.eigvalsh(matrix())[-1])
            finished.append((est, exact))
    warm = [(e, x) for e, x in finished if not e.restarted]
    assert len(warm) >= 20
    assert np.median([e.matvecs for e, _ in warm]) <= 2
    assert max(abs(e.value - x) / x for e, x in warm) <= 0.01


def test_a_broken_warm_start_restarts_from_the_neighbourhood() -> None:
    # The spectrum reorders: the old top eigenvector is now an eigenvector of 2, under
    # half the last value, and a warm Lanczos run converges to it at once. The tracker
    # must see the drop and find the new top (10) from the neighbourhood.
    params = [torch.zeros(60, dtype=torch.float64, requires_grad=True)]
    rest = np.linspace(0, 1, 58).tolist()
    spectra = {"now": torch.diag(torch.tensor([10.0, 1.5, *rest], dtype=torch.float64))}

    def probe() -> torch.Tensor:
        (x,) = params
        return 0.5 * x @ spectra["now"] @ x

    tracker = SharpnessTracker(params, probe, seed=2)
    while tracker.advance() is None:
        pass
    spectra["now"] = torch.diag(torch.tensor([2.0, 10.0, *rest], dtype=torch.float64))
    est = None
    while est is None:
        est = tracker.advance()
    assert est.restarted and est.converged
    assert est.value == pytest.approx(10.0, rel=1e-3)


def test_update_direction_is_the_step_each_optimizer_took() -> None:
    for make, kwargs in (
        (torch.optim.Adam, {"lr": 0.1}),
        (torch.optim.AdamW, {"lr": 0.1, "weight_decay": 0.0, "amsgrad": True}),
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
        (torch.optim.SGD, {"lr": 0.1}),
    ):
        problem = make_problem("mse", "init")
        params = list(problem.model.parameters())
        opt = make(params, **kwargs)
        assert update_direction(opt, params) is None or make is torch.optim.SGD
        for _ in range(3):
            opt.zero_grad()
            problem.probe().backward()
            before = torch.cat([p.detach().reshape(-1) for p in params])
            opt.step()
        after = torch.cat([p.detach().reshape(-1) for p in params])
        u = update_direction(opt, params)
        assert u is not None
        # θ ← θ − η·u: the step taken, to rounding.
        assert torch.allclose(before - 0.1 * u, after, rtol=0, atol=1e-12), make.__name__


def test_the_tracker_reports_curvature_along_the_update() -> None:
    problem = make_problem("mse", "trained")  # Adam with state
    params = list(problem.model.parameters())
    opt = problem.optimizer
    assert opt is not None
    opt.zero_grad()
    problem.probe().backward()
    opt.step()
    opt.zero_grad()
    tracker = SharpnessTracker(problem.model, problem.probe, opt, seed=0)
    est = None
    while est is None:
        est = tracker.advance()
    u = update_direction(opt, params)
    assert u is not None
    exact = update_curvature(problem.model, problem.probe, u, opt)
    assert est.preconditioned
    assert est.update_curvature == pytest.approx(exact.curvature, rel=1e-9)
    assert est.update_curvature_preconditioned == pytest.approx(exact.preconditioned, rel=1e-9)
    assert est.eta_max == pytest.approx(exact.eta_max, rel=1e-9)
    # Preconditioned curvature along u is a Rayleigh quotient of P⁻¹H: at most λ_max.
    assert est.update_curvature_preconditioned <= est.value * (1 + 0.01)  # λ to within 1%


def test_critical_sharpness_on_a_quadratic_is_the_closed_form() -> None:
    a = spectrum_with([6.0, 2.0, 1.0, 0.5, 0.1], 3)
    x = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.0], dtype=torch.float64, requires_grad=True)

    def probe() -> torch.Tensor:
        return 0.5 * x @ a @ x

    g = (a @ x).detach()
    u = g + 0.3 * torch.tensor([1.0, 0.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    closed = float(2 * (g @ u) / (u @ a @ u))
    before = x.detach().clone()
    for lr, forwards in ((0.05, 10), (10.0, 10), (closed, 4)):
        result = critical_sharpness([x], probe, u, lr, max_forwards=forwards)
        assert result.forwards <= forwards
        assert result.lower <= closed <= result.upper
        assert result.eta_c == pytest.approx(closed, rel=1e-9)
        assert result.lambda_c == pytest.approx(2 / closed, rel=1e-9)
        assert torch.equal(x.detach(), before)  # restored bitwise


def test_critical_sharpness_leaves_the_model_and_the_rng_as_they_were() -> None:
    torch.manual_seed(0)
    model = dropout_bn_model().double()
    model.train()
    xb, yb = torch.randn(32, 6, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    direction = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    result = critical_sharpness(
        model, lambda: torch.nn.functional.mse_loss(model(xb), yb), direction, 0.01
    )
    assert result.forwards <= 10 and result.eta_c > 0
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_bad_tracker_arguments_say_what_is_wrong() -> None:
    problem = make_problem("mse", "init")
    with pytest.raises(ValueError, match="hvps_per_step"):
        SharpnessTracker(problem.model, problem.probe, hvps_per_step=1)  # never converges
    with pytest.raises(ValueError, match="max_hvps"):
        SharpnessTracker(problem.model, problem.probe, hvps_per_step=4, max_hvps=3)
    with pytest.raises(ValueError, match="restart"):
        SharpnessTracker(problem.model, problem.probe, restart="cold")  # type: ignore[arg-type]
