"""Sharpness measured during training reaches the daemon, within the time budget."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import metric

import edgewatch
from edgewatch.client.curvature import START_SEED, CurvatureSchedule
from edgewatch.client.pacing import MAX_SLICE_HVPS
from edgewatch.monitor.tracking import SharpnessTracker
from edgewatch.server import Daemon
from edgewatch_testkit.curvature_problems import Problem, make_problem
from edgewatch_testkit.net import http_json


def train_until(
    problem: Problem,
    optimizer: torch.optim.Optimizer,
    daemon: Daemon,
    job: str,
    done: Callable[[CurvatureSchedule], bool],
    budget: float = 0.5,
    scheduler: Any = None,
    **options: Any,
) -> edgewatch.Monitor:
    """Full-batch training with a monitor until ``done`` (or 20 s: estimates are paced by
    wall time, so the tests wait for them rather than assume a speed)."""
    with edgewatch.attach(
        optimizer,
        model=problem.model,
        job=job,
        endpoint=daemon.endpoint,
        probe=problem.probe,
        budget=budget,
        scheduler=scheduler,
        **options,
    ) as mon:
        assert mon.curvature is not None
        deadline = time.monotonic() + 20
        while not done(mon.curvature) and time.monotonic() < deadline:
            optimizer.zero_grad()
            loss = problem.probe()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            mon.step(loss)
    optimizer.zero_grad()
    return mon


def test_gd_at_the_edge_reports_sharpness_near_two_over_lr(daemon: Daemon) -> None:
    problem = make_problem("mse", "eos")  # already at λ ≈ 2/η for η = 0.2
    optimizer = torch.optim.SGD(problem.model.parameters(), lr=0.2)
    mon = train_until(problem, optimizer, daemon, "eos", lambda c: c.estimates >= 3)
    assert mon.curvature is not None and mon.curvature.estimates >= 3
    state = daemon.jobs.get("eos")
    assert state is not None and state.sharpness is not None and not state.preconditioned
    exact = problem.spectrum()[-1]  # the model after the last step
    assert state.sharpness == pytest.approx(exact, rel=0.05)
    ratio = metric(daemon, "edgewatch_stability_ratio", job_id="eos")
    assert ratio == pytest.approx(state.sharpness * 0.2 / 2, rel=1e-9)
    assert 0.9 < ratio < 1.1  # the edge
    rows = daemon.store.sharpness(state.pk)
    assert sum(r["method"] == "lanczos" for r in rows) == mon.curvature.estimates


def test_adam_jobs_report_preconditioned_sharpness_against_38_over_lr(daemon: Daemon) -> None:
    problem = make_problem("ce", "init")
    optimizer = torch.optim.Adam(problem.model.parameters(), lr=1e-2)
    train_until(problem, optimizer, daemon, "adam", lambda c: c.estimates >= 1)
    state = daemon.jobs.get("adam")
    assert state is not None and state.preconditioned and state.sharpness is not None
    threshold = metric(daemon, "edgewatch_stability_threshold", job_id="adam")
    assert threshold == pytest.approx(38 / 1e-2)


def test_curvature_stays_within_its_share_of_the_run_counted_in_step_times(
    daemon: Daemon,
) -> None:
    problem = make_problem("mse", "init")
    optimizer = torch.optim.SGD(problem.model.parameters(), lr=0.005)  # far from the edge
    budget, total = 0.2, 600
    steps = {"n": 0}

    def done(schedule: CurvatureSchedule) -> bool:
        steps["n"] += 1
        return steps["n"] > total

    mon = train_until(problem, optimizer, daemon, "budget", done, budget=budget, total_steps=total)
    schedule = mon.curvature
    assert schedule is not None and schedule.estimates >= 2 and schedule.urgency == 1.0
    spent = schedule.spending.spent()  # in median training steps
    # Amortised: never past budget × the run's steps, give or take one slice (an estimate
    # under way finishes its slice), whatever the machine's speed.
    slice_cost = (schedule.tracker.hvps_per_step + 1) * schedule.spending.per_unit()
    assert spent <= budget * total + slice_cost
    stats = mon.stats
    assert stats["estimates_first"] == 1
    assert sum(v for k, v in stats.items() if k.startswith("estimates_")) == schedule.estimates
    # The same bound in per mille, which mon.stats rounds to a whole number.
    assert stats["curvature_permille"] <= 1000 * budget + 1000 * slice_cost / total + 0.5


def test_a_failing_probe_is_counted_and_training_goes_on(daemon: Daemon) -> None:
    param = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=0.1)

    def broken_probe() -> torch.Tensor:
        raise RuntimeError("probe batch missing")

    with edgewatch.attach(
        optimizer, job="broken-probe", endpoint=daemon.endpoint, probe=broken_probe, budget=0.5
    ) as mon:
        deadline = time.monotonic() + 20
        while mon.curvature.attempts < 2 and time.monotonic() < deadline:  # type: ignore[union-attr]
            param.grad = torch.ones(3)
            optimizer.step()
            mon.step(1.0)
    steps = mon.stats["steps"]
    assert mon.stats["errors"] == 2  # each attempt failed, was counted, and was not retried at once
    assert steps > 2 and daemon.store.count("steps") == steps


def test_the_sharpness_api_gives_each_estimate_with_its_threshold(daemon: Daemon) -> None:
    problem = make_problem("mse", "init")
    optimizer = torch.optim.SGD(problem.model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 + 0.01 * s)
    mon = train_until(
        problem,
        optimizer,
        daemon,
        "api-sharp",
        lambda c: c.estimates >= 3,
        scheduler=scheduler,
        probe_batch=64,
    )
    rows = http_json(daemon.http_url + "/api/jobs/api-sharp/sharpness")
    rows = [r for r in rows if r["method"] == "lanczos"]  # not the critical sharpness
    assert len(rows) == mon.curvature.estimates >= 3  # type: ignore[union-attr]
    steps = {s["step"]: s["lr"] for s in http_json(daemon.http_url + "/api/jobs/api-sharp/steps")}
    for row in rows:
        assert row["lr"] == steps[row["step"]]  # the LR that step used, not the next one
        assert row["stability_threshold"] == pytest.approx(2 / row["lr"])
        assert row["stability_ratio"] == pytest.approx(row["value"] * row["lr"] / 2)
        assert row["matvecs"] >= 1 and row["residual"] is not None
        assert row["probe_batch"] == 64 and row["method"] == "lanczos" and row["seconds"] > 0


def test_near_the_edge_the_daemon_asks_for_more_frequent_estimates(daemon: Daemon) -> None:
    problem = make_problem("mse", "eos")  # stability ratio ≈ 1 at η = 0.2
    optimizer = torch.optim.SGD(problem.model.parameters(), lr=0.2)
    mon = train_until(problem, optimizer, daemon, "urgent", lambda c: c.urgency > 1.0, budget=0.1)
    assert mon.sender is not None and mon.sender.stability_ratio is not None
    assert mon.sender.stability_ratio >= 0.8
    assert mon.curvature is not None and mon.curvature.urgency == 4.0


def test_a_rise_the_budget_cannot_cover_is_said_once(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    """A budget spent by the first estimate leaves a planned ×30 jump unmeasured: the
    client says so once, in the log and in ``mon.stats``, rather than go quiet. (The
    jump is far enough off that the first estimate does not wait for it: one within
    about three horizons would get the run's first estimate, ``Rises.first_waits``.)"""
    problem = make_problem("mse", "init")
    optimizer = torch.optim.SGD(problem.model.parameters(), lr=0.001)
    jump = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 30.0 if s >= 450 else 1.0)
    steps = {"n": 0}

    def done(schedule: CurvatureSchedule) -> bool:
        steps["n"] += 1
        return steps["n"] > 600

    with caplog.at_level("WARNING", logger="edgewatch.client"):
        mon = train_until(
            problem, optimizer, daemon, "short", done, budget=0.001, scheduler=jump, total_steps=600
        )
    said = [r for r in caplog.records if "no estimate before the LR rise" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    stats = mon.stats
    assert stats["estimates_rise"] == 0 and 0 < stats["rise_unmeasured_step"] < 450, stats
    # The first estimate, cut short at the cap the budget allowed, is counted unconverged.
    assert stats["estimates_first"] == 1 and stats["unconverged_estimates"] == 1, stats


def test_a_rerun_of_a_run_stores_the_same_first_estimate(daemon: Daemon) -> None:
    """Two identical runs store the same sharpness: the estimates' start vectors come
    from a seeded generator of their own, not the OS's entropy, so a re-run (or the
    benchmark on another day) gets the same estimates and so the same alerts."""
    stored = []
    for job in ("rerun-1", "rerun-2"):
        problem = make_problem("ce", "init")
        optimizer = torch.optim.SGD(problem.model.parameters(), lr=0.05)
        train_until(problem, optimizer, daemon, job, lambda c: c.estimates >= 1, budget=0.5)
        state = daemon.jobs.get(job)
        assert state is not None
        rows = [r for r in daemon.store.sharpness(state.pk) if r["method"] == "lanczos"]
        assert rows, f"{job}: no estimate stored"
        stored.append((rows[0]["step"], rows[0]["matvecs"], rows[0]["value"]))
    assert stored[0] == stored[1]


def test_a_first_estimate_its_share_cuts_short_runs_in_one_slice(daemon: Daemon) -> None:
    """A short run's share buys its first estimate only a few HVPs: they run in one
    slice, one Krylov space, rather than two slices of two cut apart, which read as low
    as 0.01 of λ_max on the benchmark's fast families (bench/RESULTS.md, "One slice")."""
    problem = make_problem("ce", "init")
    optimizer = torch.optim.SGD(problem.model.parameters(), lr=0.05)
    mon = train_until(
        problem, optimizer, daemon, "one-slice", lambda c: c.estimates >= 1, 0.03, total_steps=300
    )
    assert mon.curvature is not None
    first = mon.curvature.tracker.last
    assert first is not None and first.slices == 1, first
    assert 2 <= first.matvecs <= MAX_SLICE_HVPS
    # It is one Lanczos run of that many HVPs from the seeded start, at the parameters it
    # ran at (training stopped at the step it finished).
    hvps = first.matvecs
    alone = SharpnessTracker(
        problem.model, problem.probe, hvps_per_step=hvps, max_hvps=hvps, seed=START_SEED
    )
    again = alone.advance()
    assert again is not None and again.value == pytest.approx(first.value, rel=1e-6)
    assert first.value <= problem.spectrum()[-1] * (1 + 1e-6)  # a Ritz value: from below
