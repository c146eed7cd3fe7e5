"""edgewatch.preflight: the verdict on exact quadratics, and a pre-flight leaves the
user's model, optimizer, scheduler and RNG states exactly as they were."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

import edgewatch
from edgewatch.trial.grid import make_grid
from edgewatch.trial.verdict import Judgement, Rules, judge

CURVATURES = torch.tensor([10.0, 3.0, 1.0, 0.5])  # λ_max = 10: GD's edge is η = 0.2


class Quadratic(torch.nn.Module):
    """½ Σ λ_i w_i²: the Hessian is diag(λ), the same at every point."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return 0.5 * (CURVATURES.double() * self.w**2).sum()


def quadratic_preflight(
    plan: object, steps: int = 40, total: int | None = None, **kw: object
) -> edgewatch.PreflightReport:
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    return edgewatch.preflight(
        model, opt, lambda m: m(), plan, steps=steps, batches=lambda: None,
        loss=lambda m, _: m(), total_steps=total or steps, **kw,
    )  # fmt: skip


def test_a_warmup_crossing_the_edge_is_reported_at_its_step() -> None:
    # η_t = 0.02·(t + 1): η·λ = 2 first at step 9 (η = 0.2), and 4× the edge at the
    # peak (η = 0.8): past Rules.hot (3), unsafe whatever the loss has shown so far.
    report = quadratic_preflight(lambda t: 0.02 * (t + 1))
    assert report.crossing is not None
    assert report.crossing[0] == 9 and report.crossing[2] == pytest.approx(1.0, rel=1e-3)
    assert report.verdict == "unsafe"
    assert report.fix is not None and report.fix.verdict == "safe"
    assert report.fix.peak_lr < 0.2  # a lower peak under the edge, measured in its trial


def test_a_compressed_plan_locates_the_crossing_within_one_stride() -> None:
    # A 600-step warmup to 0.6 seen in 40 trial steps (stride ≈ 15): the edge is at plan
    # step 199; the first trained step at or past it is within one stride.
    report = quadratic_preflight(lambda t: 0.001 * (t + 1), total=600)
    assert report.stride > 1
    assert report.crossing is not None
    assert 199 <= report.crossing[0] <= 199 + report.stride + 1


def test_safe_borderline_and_hot_from_the_start() -> None:
    safe = quadratic_preflight(lambda t: 0.1)  # ratio 0.5
    assert safe.verdict == "safe" and safe.margin == pytest.approx(2.0, rel=1e-3)
    assert safe.fix is None
    edge = quadratic_preflight(lambda t: 0.19)  # ratio 0.95
    assert edge.verdict == "borderline" and edge.peak_ratio == pytest.approx(0.95, rel=1e-3)
    hot = quadratic_preflight(lambda t: 0.5)  # ratio 2.5 from step 0
    assert hot.verdict == "unsafe"
    assert hot.fix is not None and hot.fix.peak_lr * 10 < 2.0
    text = str(hot)
    assert "UNSAFE" in text and "fix (scale): peak LR" in text


def test_a_scheduled_jump_is_cut_down_and_the_fix_is_a_plan() -> None:
    # 0.1 (ratio 0.5) then ×8 at step 20 (ratio 4): the fix cuts the jump, keeps the rest.
    def plan(t: int) -> float:
        return 0.1 if t < 20 else 0.8

    report = quadratic_preflight(plan)
    assert report.verdict == "unsafe" and report.crossing is not None
    assert report.crossing[0] == 20
    assert report.fix is not None and report.fix.kind == "jump"
    assert report.fix.jump_step == 20 and report.fix.peak_lr < 0.2
    fixed = report.fixed_plan(plan)
    assert fixed is not None
    assert fixed(5) == 0.1 and fixed(30) == pytest.approx(report.fix.peak_lr)
    hot = quadratic_preflight(lambda t: 0.5)
    assert hot.fix is not None and hot.fix.kind == "scale"
    scaled = hot.fixed_plan(lambda t: 0.5)
    assert scaled is not None and scaled(7) == pytest.approx(hot.fix.peak_lr)


def test_the_fix_is_the_highest_peak_that_stayed_safe() -> None:
    # Hot from the start at 0.5 (ratio 2.5). The ladder's first safe rung is a tenth of
    # the peak, 0.05 (ratio 0.25); bisecting towards 0.5 raises it to 0.158 (ratio 0.79),
    # under the borderline LR 0.18 (ratio 0.9) and within one bisection step of it.
    hot = quadratic_preflight(lambda t: 0.5)
    assert hot.fix is not None and hot.fix.verdict == "safe"
    assert 0.12 < hot.fix.peak_lr < 0.18
    assert hot.fix.margin == pytest.approx(0.2 / hot.fix.peak_lr, rel=1e-3)

    # A jump from 0.05 to 0.4 at step 20: taking the jump out (0.05 held) is safe, and
    # it is the fix: the LR the run trained at before the jump, not a smaller jump.
    def plan(t: int) -> float:
        return 0.05 if t < 20 else 0.4

    report = quadratic_preflight(plan)
    assert report.fix is not None and report.fix.kind == "jump"
    assert report.fix.peak_lr == pytest.approx(0.05)


def test_grid_keeps_short_plans_and_compresses_long_ones() -> None:
    short = make_grid([0.1] * 50, 100)
    assert short.stride == 1.0 and len(short) == 50
    plan = [min(1.0, (t + 1) / 1000) for t in range(5000)]
    long = make_grid(plan, 100)
    assert long.peak_step == 999 and 999 in long.plan_steps
    assert long.stride == pytest.approx((1000 + 250 - 1) / 99)
    assert long.warmup_steps == 1000


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.Tanh(),
            torch.nn.Dropout(0.2), torch.nn.Linear(16, 3),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_the_users_objects_and_rng_states_are_untouched(kind: str) -> None:
    torch.manual_seed(0)
    model = Net()
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    loss_fn = torch.nn.functional.cross_entropy
    if kind == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / 10))
    for _ in range(3):  # some optimizer and scheduler state to keep
        loss_fn(model(x), y).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    before = (
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.grad for p in model.parameters()],
        torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy(),
        repr(opt.state_dict()), repr(sched.state_dict()),
    )  # fmt: skip

    def batches() -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.randint(0, 64, (16,))  # draws from the global RNG on purpose
        random.random()
        np.random.rand()
        return x[i], y[i]

    report = edgewatch.preflight(
        model, opt, lambda m: loss_fn(m(x[:32]), y[:32]), sched, steps=30,
        batches=batches, loss=lambda m, b: loss_fn(m(b[0]), b[1]), total_steps=30,
        target_batches=lambda: (x[:48], y[:48]),
    )  # fmt: skip
    assert report.verdict in ("safe", "borderline", "unsafe")
    assert report.batch is not None and report.batch.target_size == 48
    after_state = model.state_dict()
    for k, v in before[0].items():
        assert torch.equal(v, after_state[k]), k
    assert [p.grad for p in model.parameters()] == before[1]
    assert torch.equal(torch.get_rng_state(), before[2])
    assert random.getstate() == before[3]
    assert np.array_equal(np.random.get_state()[1], before[4])
    assert repr(opt.state_dict()) == before[5]
    assert repr(sched.state_dict()) == before[6]


def test_the_report_has_a_record_and_a_picture(tmp_path: object) -> None:
    import json
    import pathlib

    report = quadratic_preflight(lambda t: 0.02 * (t + 1))
    record = report.to_record()
    assert json.loads(json.dumps(record, allow_nan=False))["verdict"] == "unsafe"
    path = pathlib.Path(str(tmp_path)) / "preflight.png"
    report.save_png(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_ratio_growing_fast_at_the_trials_end_is_unsafe() -> None:
    # Progressive sharpening: the loss is healthy and the ratio far under the edge, but
    # it doubles every 10 steps: 0.16 at the trial's end reaches 1.0 about 26 steps
    # later. The same end reached growing 10x slower stays safe (264 steps away).
    losses = [1.0 - 0.001 * t for t in range(100)]

    def judged(doubling: float, rules: Rules) -> Judgement:
        ratios = [(t, t, 1.0, 0.16 * 2 ** ((t - 96) / doubling)) for t in range(0, 100, 4)]
        return judge(losses, ratios, 1.0, rules)

    fast = judged(10.0, Rules())
    assert fast.verdict == "borderline" and "growing" in fast.reason
    assert fast.to_edge == pytest.approx(10 * math.log2(1 / 0.16), rel=1e-6)
    slow = judged(100.0, Rules())
    assert slow.verdict == "safe" and slow.to_edge == pytest.approx(264.4, rel=1e-3)
    assert judged(10.0, Rules(sharpening=0)).verdict == "safe"
    # Adam-type optimizers train at their edge: reaching it is no verdict.
    assert judged(10.0, Rules(preconditioned=True)).verdict == "safe"
    # A warmup's rise is the LR's, not the curvature's: the same sharpness throughout.
    warmup = [(t, t, 0.002 * (t + 1), 0.4) for t in range(0, 100, 4)]
    rising = judge(losses, warmup, 1.0, Rules())
    assert rising.to_edge is None and rising.verdict == "safe"


def test_the_fix_is_a_plan_from_the_scheduler_passed() -> None:
    # The user passes a torch scheduler to pre-flight, and the same to fixed_plan.
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5)
    report = edgewatch.preflight(
        model, opt, lambda m: m(), sched, steps=40, batches=lambda: None,
        loss=lambda m, _: m(), total_steps=40,
    )  # fmt: skip
    assert report.verdict == "unsafe" and report.fix is not None
    fixed = report.fixed_plan(sched)
    assert fixed is not None and fixed(7) == pytest.approx(report.fix.peak_lr)
    assert sched.last_epoch == 0 and opt.param_groups[0]["lr"] == 0.5  # read on a copy


def test_an_adam_type_ratio_over_the_edge_is_reported_and_the_loss_judges() -> None:
    # Healthy minibatch Adam trains with its preconditioned ratio over 1 (README,
    # "Forecast"): with a healthy loss, 5× the edge is safe for Adam and unsafe for SGD,
    # and so is 12,000× (a healthy char_rnn trial's, bench/RESULTS.md).
    losses = [1.0 - 0.001 * t for t in range(100)]

    def ratios(value: float) -> list[tuple[int, int, float, float]]:
        return [(t, t, 1.0, value) for t in range(0, 100, 4)]

    adam = judge(losses, ratios(5.0), 1.0, Rules(preconditioned=True))
    assert adam.verdict == "safe" and adam.max_ratio == 5.0
    assert adam.trouble is None  # its crossing is reported, not counted as trouble
    assert judge(losses, ratios(5.0), 1.0, Rules()).verdict == "unsafe"
    assert judge(losses, ratios(1.2e4), 1.0, Rules(preconditioned=True)).verdict == "safe"
    spiked = [*losses[:50], 2.5, *losses[51:]]  # the loss judges: a spike is unsafe
    assert judge(spiked, ratios(2.0), 1.0, Rules(preconditioned=True)).verdict == "unsafe"
