"""The benchmark's families and harness (bench/instability/families,
bench/instability/harness.py): every family
builds deterministic runs, and the harness trains a run once under one monitor per
budget, through a real daemon, without changing it."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from types import ModuleType

import pytest
import torch

from bench.instability.families import (
    FAMILIES,
    RunSpec,
    build,
    char_gpt,
    digits_mlp,
    fast_cnn,
    fast_gru,
    fast_mlp,
)
from bench.instability.harness import RunClock, RunResult, run
from bench.instability.scoring import excursions, scored
from edgewatch.server import Daemon

FAST = (fast_cnn, fast_mlp, fast_gru)


@pytest.fixture(autouse=True)
def threads_restored() -> Iterator[None]:
    """The harness pins torch to one thread; the tests after these keep their own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _state(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_family_builds_the_same_run_twice(family: str) -> None:
    grid = FAMILIES[family].grid([0, 1])
    assert grid and all(spec.family == family for spec in grid)
    assert len({spec.job for spec in grid}) == len(grid), "job names must be unique"
    spec = grid[0]
    a, b = build(spec), build(spec)
    for x, y in zip(_state(a.model), _state(b.model), strict=True):
        assert torch.equal(x, y)
    for step in (0, 57):
        batch_a, batch_b = a.batch(step), b.batch(step)
        assert (batch_a is None and batch_b is None) or torch.equal(batch_a, batch_b)
    assert a.planned_lr(0) > 0
    label = a.label_loss()
    assert math.isfinite(label) and label == b.label_loss()
    assert a.probe().dim() == 0
    before = _state(a.model)
    a.label_loss()
    for x, y in zip(before, _state(a.model), strict=True):
        assert torch.equal(x, y), "the label loss must leave no trace (BatchNorm statistics)"


def test_a_spec_and_a_result_survive_json() -> None:
    spec = char_gpt.run(0, 400, 3e-3, clip=None, warmup=50, jump_at=200, jump=100.0)
    assert RunSpec.from_dict(json.loads(json.dumps(dataclasses.asdict(spec)))) == spec
    result = run(dataclasses.replace(digits_mlp.grid([0])[0], steps=3), None, ())
    again = RunResult.from_dict(json.loads(json.dumps(dataclasses.asdict(result))))
    assert again == result


def test_monitors_for_two_budgets_watch_one_run_without_changing_it(daemon: Daemon) -> None:
    # Heavy ball: its first estimate is at step 3 (an Adam-type run's may wait for the
    # second moment to settle, 50 steps).
    spec = dataclasses.replace(fast_cnn.run(0, 0.01), steps=30)
    bare = run(spec, None, ())
    watched = run(spec, daemon.endpoint, (0.02, 0.2))
    assert watched.label_loss == bare.label_loss
    assert watched.train_loss == bare.train_loss
    assert watched.grad_norm == bare.grad_norm
    jobs = {j["job_id"]: j["pk"] for j in daemon.store.jobs()}
    assert sorted(watched.jobs) == ["0.02", "0.2"]
    for key, job in watched.jobs.items():
        assert job == f"{spec.job}@{key}"
        steps = daemon.store.steps(jobs[job])
        assert [s["step"] for s in steps] == list(range(spec.steps))
        assert [s["lr"] for s in steps] == pytest.approx(watched.lr, rel=1e-6)
        assert [s["loss"] for s in steps] == pytest.approx(watched.train_loss, rel=1e-6)
        # No clipping here: the stored norm is the harness's own.
        assert [s["grad_norm"] for s in steps] == pytest.approx(watched.grad_norm, rel=1e-4)
        assert daemon.store.count("sharpness", jobs[job]) >= 1
        stats = watched.monitors[key]
        assert stats["errors"] == 0 and stats["unacknowledged"] == 0
        assert watched.curvature_seconds[key] > 0


def test_the_lr_override_is_the_lr_in_force() -> None:
    spec = char_gpt.run(0, 8, 1e-3, warmup=4)

    def hold(step: int, planned: float) -> float:
        return min(planned, 5e-4) if step >= 3 else planned

    result = run(spec, None, (), lr_override=hold)
    plan = build(spec).planned_lr
    assert result.lr == pytest.approx([hold(t, plan(t)) for t in range(spec.steps)])
    assert result.lr[2] == pytest.approx(7.5e-4) and result.lr[5] == pytest.approx(5e-4)


def test_a_diverging_run_stops_and_its_jobs_end_failed(daemon: Daemon) -> None:
    spec = next(s for s in digits_mlp.grid([0]) if s.name == "mlp_gd_x5")
    result = run(spec, daemon.endpoint, (0.02,))
    assert result.stopped_early and len(result.label_loss) < 20
    job = next(j for j in daemon.store.jobs() if j["job_id"] == result.jobs["0.02"])
    assert job["status"] == "failed"


def test_the_stored_gradient_norm_is_the_one_before_clipping(daemon: Daemon) -> None:
    """The harness clips between backward and optimizer.step(), as the README's loop."""
    spec = char_gpt.run(0, 3, 3e-3, clip=1.0)
    result = run(spec, daemon.endpoint, (0.02,))
    assert result.grad_norm[0] > 2.0  # clipping did act
    pk = next(j["pk"] for j in daemon.store.jobs() if j["job_id"] == result.jobs["0.02"])
    stored = [s["grad_norm"] for s in daemon.store.steps(pk)]
    assert stored == pytest.approx(result.grad_norm, rel=1e-4)


@pytest.mark.parametrize("family", FAST, ids=lambda f: f.NAME)
def test_a_fast_family_runs_a_few_steps(family: ModuleType) -> None:
    specs = family.grid([0, 1])
    names = {s.name for s in specs}
    assert any("jump" in n for n in names), "each fast family has scheduled LR jumps"
    assert len(specs) == 2 * len(names)
    spec = dataclasses.replace(specs[0], steps=5)
    result = run(spec, None, ())
    assert len(result.label_loss) == 5 and all(math.isfinite(v) for v in result.label_loss)
    assert result.median_step > 0


def _events(spec: RunSpec) -> list[tuple[str, int]]:
    """The scored events of a run, trained bare (no monitor, no daemon)."""
    loss = run(spec, None, ()).label_loss
    return [(e.kind, e.onset) for e in scored(excursions(loss)) if e.onset is not None]


@pytest.mark.parametrize("family", FAST, ids=lambda f: f.NAME)
def test_a_fast_family_labels_are_what_its_plans_say(family: ModuleType) -> None:
    """A healthy plan trains event-free; a jump's first event is at or after its jump;
    a plan too hot from the start has an event within its first 50 steps (seed 0, as
    calibrated in the family's docstring): scored, or one it never recovered from (the
    MLP at 0.3 climbs to 5× its running minimum by step 30 and never comes back)."""
    healthy = family.run(0, family.HEALTHY[1])
    lr, factor = family.JUMPS[-1]
    jumped = family.run(0, lr, jump=factor)
    hot = family.run(0, family.HOT[0])
    assert _events(healthy) == []
    events = _events(jumped)
    assert events and events[0][1] >= family.JUMP_AT, events
    assert jumped.steps >= 400 and jumped.steps == family.JUMP_AT * 2
    loss = run(hot, None, ()).label_loss
    onsets = [e.onset for e in excursions(loss) if e.onset is not None]
    assert onsets and onsets[0] <= 50, excursions(loss)


def test_the_curvature_clock_counts_median_step_times() -> None:
    """The harness's lent clock advances by the running median step, so a stall (or a
    machine twice as slow on one step) moves it by one ordinary step, not by the stall."""
    clock = RunClock()
    for seconds, median in ((0.002, 0.002), (0.004, 0.003), (1.0, 0.004), (0.002, 0.003)):
        before = clock.now
        clock.step_done(seconds)
        assert clock.now - before == pytest.approx(median)
        assert clock.median_step == pytest.approx(median)
