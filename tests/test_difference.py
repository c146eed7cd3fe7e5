"""Difference products: the tracker's cheaper Hessian-vector products, used only where a
comparison with the exact ones trusts them, and leaving the parameters as they were."""

from __future__ import annotations

import pytest
import torch

from edgewatch.client.pacing import TIMED_STEPS, Spending, StepClock
from edgewatch.monitor import SharpnessTracker, sharpness
from edgewatch.monitor.difference import AGREEMENT, DifferenceOperator, calibrate
from edgewatch.monitor.hvp import HessianOperator


def float32_problem(dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, object]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=g)
    y = torch.sin(x @ torch.randn(10, 1, generator=g))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    model = model.to(dtype)
    x, y = x.to(dtype), y.to(dtype)

    def probe() -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(x), y)

    return model, probe


def test_difference_products_agree_and_leave_the_parameters_bitwise_as_they_were() -> None:
    model, probe = float32_problem()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    versions = [p._version for p in params]
    user_loss = probe()  # the user's graph, built before the products
    top = sharpness(model, probe, tol=1e-4, max_iter=60)
    exact = HessianOperator(params, probe)
    product = exact(top.vector)
    found = calibrate(exact, top.vector, product, probe)
    assert found.rel_step is not None and found.error <= AGREEMENT
    difference = DifferenceOperator(params, probe, rel_step=found.rel_step)
    rayleigh = float(top.vector.to(torch.float32) @ difference(top.vector))
    assert rayleigh == pytest.approx(top.value, rel=1e-2)
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert [p._version for p in params] == versions
    user_loss.backward()  # type: ignore[no-untyped-call]  # not refused, same values
    grads = [p.grad.clone() for p in params if p.grad is not None]
    model.zero_grad()
    probe().backward()  # type: ignore[no-untyped-call]
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, params, strict=True))


def test_differences_that_disagree_are_not_used() -> None:
    # bfloat16 keeps 8 bits of mantissa: a gradient's difference at a small step is noise.
    model, probe = float32_problem(torch.bfloat16)
    tracker = SharpnessTracker(model, probe, hvps_per_step=4, max_hvps=20, seed=0, hvp="auto")
    estimates = []
    while len(estimates) < 3:
        est = tracker.advance()
        if est is not None:
            estimates.append(est)
    assert tracker.calibration is not None and tracker.calibration.rel_step is None
    assert tracker.calibration.error > AGREEMENT
    assert all(est.exact for est in estimates)


def test_warm_estimates_run_on_differences_where_they_agree() -> None:
    model, probe = float32_problem()
    truth = sharpness(model, probe, tol=1e-4, max_iter=60).value
    tracker = SharpnessTracker(model, probe, hvps_per_step=2, seed=0, hvp="auto")
    estimates = []
    while len(estimates) < 4:  # a cold estimate, then warm ones at the same parameters
        est = tracker.advance()
        if est is not None:
            estimates.append(est)
        if len(estimates) < 2:  # compared in the first warm estimate's first slice
            assert tracker.calibration is None
    assert tracker.calibration is not None and tracker.calibration.rel_step is not None
    assert estimates[0].exact and not any(est.exact for est in estimates[2:])
    for est in estimates:
        assert est.value == pytest.approx(truth, rel=2e-2)
    exact_only = SharpnessTracker(model, probe, hvps_per_step=2, seed=0)  # the default
    for _ in range(3):
        while exact_only.advance() is None:
            pass
    assert exact_only.calibration is None and exact_only.last is not None
    assert exact_only.last.exact


def test_the_budget_prices_exact_and_difference_products_apart() -> None:
    # What curvature_permille in mon.stats counts: each kind at its own lowest price, read
    # against the training step of the moment. A clock that says every step took 10 ms.
    now = [0.0]
    ticks = StepClock(lambda: now[0])
    for _ in range(TIMED_STEPS + 1):
        now[0] += 0.010
        ticks.tick(0.0)
    spending = Spending(ticks)
    spending.charge(0.030, {"exact": 3})  # a slice: graph and two products, 1 step each
    assert spending.per_unit("exact") == pytest.approx(1.0)
    assert spending.per_unit("difference") == pytest.approx(1.0)  # unknown: the dearer
    spending.charge(0.015, {"difference": 3})  # half a step each
    assert spending.per_unit("difference") == pytest.approx(0.5)
    assert spending.sharpness() == pytest.approx(3 * 1.0 + 3 * 0.5)
    spending.charge(0.001, {"exact": 1, "difference": 2})  # the comparing slice reads no price
    assert spending.per_unit("exact") == pytest.approx(1.0)
    assert spending.per_unit("difference") == pytest.approx(0.5)
    assert spending.sharpness() == pytest.approx(4 * 1.0 + 5 * 0.5)
