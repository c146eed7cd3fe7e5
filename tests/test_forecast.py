"""The forecaster and recommender on traces with known answers (monitor/forecast.py)."""

from __future__ import annotations

import math
import random

import pytest

from edgewatch.monitor import JobForecast, LRPlan, compress
from edgewatch.monitor.forecast import PredictorSettings

SGD = {"kind": "SGD", "lr": 0.1}
QUADRATIC = PredictorSettings(margin=1.0)  # no catapult headroom: the forecast is exact


def gd_on_quadratic(
    forecast: JobForecast,
    curvature: float,
    lrs: list[float],
    *,
    every: int = 10,
    curvature_at: object = None,
) -> list[tuple[int, str, float]]:
    """GD on 0.5·λ·x², the forecast fed as the daemon would; returns (step, state, to_go)."""
    x, seen = 1.0, []
    for t, lr in enumerate(lrs):
        lam = curvature_at(t) if callable(curvature_at) else curvature
        loss = 0.5 * lam * x * x
        forecast.observe_step(t, lr, loss, lam * abs(x))
        if t % every == 0:
            forecast.observe_sharpness(t, lam, lr)
        seen.append((t, forecast.state, forecast.steps_to_instability))
        x -= lr * lam * x
        if not math.isfinite(loss):
            break
    return seen


def test_a_warmup_crossing_two_over_eta_is_forecast_at_the_known_step() -> None:
    # λ = 10: GD is stable while η < 0.2. The warmup η(t) = 0.4·(t+1)/400 reaches 0.2 at
    # t = 199: the step from which this quadratic diverges.
    lrs = [0.4 * min(1.0, (t + 1) / 400) for t in range(400)]
    forecast = JobForecast(SGD, QUADRATIC)
    forecast.observe_plan(0, compress(0, lrs))
    seen = gd_on_quadratic(forecast, 10.0, lrs)
    by_step = {t: (state, to_go) for t, state, to_go in seen}
    assert by_step[60] == ("stable", 139.0)  # forecast from the first estimates on
    assert by_step[160] == ("approaching", 39.0)
    first_approaching = next(t for t, state, _ in seen if state == "approaching")
    assert first_approaching == 199 - forecast.settings.horizon
    first_unstable = next(t for t, state, _ in seen if state == "unstable")
    assert first_unstable == 199
    # The recommendation keeps η·λ at 0.8 × 2: η = 0.16; a warmup slower than the plan's
    # rise from here (300 steps to the top), within the run: at most half of what is left.
    alert = next(a for a in forecast.alerts if a.state == "approaching")
    assert alert.recommended_lr == pytest.approx(0.16)
    assert alert.recommended_warmup_steps == (400 - 99) // 2
    assert alert.steps_low <= alert.steps_to_instability <= alert.steps_high


def test_progressive_sharpening_at_constant_lr_is_forecast_from_the_trend() -> None:
    # λ(t) = 1.4·e^(t/300) at η = 1: η·λ = 2 at t = 300·ln(2/1.4) = 107.
    crossing = 300 * math.log(2 / 1.4)
    forecast = JobForecast(SGD, PredictorSettings(margin=1.0, horizon=50))
    seen = gd_on_quadratic(forecast, 0, [1.0] * 200, curvature_at=lambda t: 1.4 * math.exp(t / 300))
    at_60 = dict((t, to_go) for t, _, to_go in seen)[60]
    assert at_60 == pytest.approx(crossing - 60, abs=3)
    first_approaching = next(t for t, state, _ in seen if state == "approaching")
    assert crossing - 50 - 10 <= first_approaching <= crossing - 50 + 1


def test_training_at_the_edge_with_a_constant_lr_raises_no_alarm() -> None:
    # Edge of stability: the measured ratio hovers around 1 (0.9-1.2) for thousands of steps.
    # A "ratio >= 1" rule would alarm all the time; the sustained level absorbs it.
    # Estimates every 20 steps (a cadence well above the 2% budget's) scatter by ±15%
    # and their trend with them: a margin of 2.5 keeps that quiet; the shipped 1.5, tuned
    # at the budgets the benchmark runs, lets one such run in a few alarm.
    rng = random.Random(0)
    forecast = JobForecast(SGD, PredictorSettings(margin=2.5))
    for t in range(3000):
        forecast.observe_step(t, 0.1, 1.0 + 0.05 * rng.random(), 1.0)
        if t % 20 == 0:
            forecast.observe_sharpness(t, 20.0 * rng.uniform(0.9, 1.2), 0.1)
    assert forecast.alerts == []
    assert forecast.state == "stable"


def test_a_scheduled_jump_from_the_edge_is_approaching_a_horizon_ahead() -> None:
    plan = LRPlan((0, 999, 1000), (0.1, 0.1, 0.3))
    forecast = JobForecast(SGD)
    forecast.observe_plan(0, plan)
    states = {}
    for t in range(1000):
        forecast.observe_step(t, plan.at(t), 1.0, 1.0)
        if t % 20 == 0:
            forecast.observe_sharpness(t, 20.0, 0.1)  # ratio 1.0: at the edge
        states[t] = forecast.state
    first = next(t for t in range(1000) if states[t] != "stable")
    assert first == 1000 - forecast.settings.horizon
    alert = forecast.alerts[0]
    assert alert.state == "approaching" and alert.steps_to_instability == forecast.settings.horizon
    # Under safety × the level of 1.0 it has sustained: not the jump.
    assert alert.recommended_lr == pytest.approx(0.1 * 0.8)


def test_a_non_finite_loss_is_diverged_at_that_step() -> None:
    forecast = JobForecast(SGD)
    for t in range(50):
        forecast.observe_step(t, 0.1, 1.0, 1.0)
    alert = forecast.observe_step(50, 0.1, float("nan"), 1.0)
    assert alert is not None and alert.state == "diverged" and alert.step == 50
    assert forecast.steps_to_instability == 0.0
    assert forecast.observe_step(51, 0.1, 1.0, 1.0) is None  # diverged stays diverged


def test_a_loss_spike_is_unstable_then_recovers_to_stable() -> None:
    settings = PredictorSettings(recover_steps=10)
    forecast = JobForecast(SGD, settings)
    losses = [1.0] * 30 + [4.0] * 5 + [1.0] * 40
    states = [forecast.observe_step(t, 0.1, v, 1.0) for t, v in enumerate(losses)]
    changes = [(a.step, a.state) for a in states if a is not None]
    assert changes[0] == (30, "unstable")
    assert changes[-1][1] == "stable"


def test_resent_steps_are_ignored() -> None:
    forecast = JobForecast(SGD)
    forecast.observe_step(10, 0.1, 1.0, 1.0)
    assert forecast.observe_step(5, 0.1, float("nan"), 1.0) is None
    assert forecast.state == "stable"


@pytest.mark.parametrize(
    ("lrs", "knots"),
    [
        ([min(1.0, (t + 1) / 100) for t in range(1000)], 3),  # linear warmup, then flat
        ([0.1 if t < 300 else 0.8 for t in range(600)], 4),  # a jump
        ([0.5 * (1 + math.cos(math.pi * t / 1000)) for t in range(1000)], None),  # cosine
    ],
)
def test_plans_compress_within_tolerance(lrs: list[float], knots: int | None) -> None:
    plan = compress(7, lrs)
    if knots is not None:
        assert len(plan.steps) == knots
    else:
        assert len(plan.steps) < 100
    for i, lr in enumerate(lrs):
        assert plan.at(7 + i) == pytest.approx(lr, rel=1.01e-3, abs=1e-12)


def test_the_gradient_norm_rule_warns_when_enabled_and_is_off_by_default() -> None:
    norms = [1.0] * 200 + [4.0] * 10
    default, enabled = JobForecast(SGD), JobForecast(SGD, PredictorSettings(grad_excursion=2.0))
    for t, g in enumerate(norms):
        default.observe_step(t, 0.1, 1.0, g)
        enabled.observe_step(t, 0.1, 1.0, g)
    assert default.alerts == []
    alert = enabled.alerts[0]
    # The short average passes 2× its baseline at step 202 and must hold there two steps.
    assert (alert.step, alert.state) == (203, "approaching")
    assert "gradient norm" in alert.reason


def test_the_reason_names_a_jump_beyond_the_horizon_that_stays_under_the_alarm() -> None:
    """An estimate far from the edge, a ×3 jump 300 steps on: no crossing, and the "why"
    names the jump's step and ratio rather than only the horizon's quiet stretch."""
    plan = LRPlan((0, 299, 300), (0.01, 0.01, 0.03))
    forecast = JobForecast(SGD)
    forecast.observe_plan(0, plan)
    forecast.observe_step(0, 0.01, 1.0, 1.0)
    forecast.observe_sharpness(0, 20.0, 0.01)  # ratio 0.1 now, 0.3 after the jump
    assert forecast.state == "stable" and forecast.crossing is not None
    assert forecast.crossing.at is None
    reason = forecast.reason
    assert "(0.01) gives ratio 0.1;" in reason  # the horizon: the LR in force
    assert "the plan's riskiest step ahead, 300 (0.03), ratio 0.3" in reason
