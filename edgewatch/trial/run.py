"""``edgewatch.preflight``: judge a whole LR plan on a copy of the model, before the job.

One trial of the plan (``grid.py``: its first steps, compressed where it is long), a
verdict (``verdict.py``), and where it is not safe, trials of candidate fixes until one
is safe or the time budget is spent: a longer warmup to the same peak where the trouble
came in the warmup (the network flattens first: Kalra & Barkeshli 2024, arXiv
2406.09405), else a lower peak LR. Each fix reported was itself trained and measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from edgewatch.client.schedule import PLAN_STEPS, PlanSource
from edgewatch.monitor.settings import PredictorSettings
from edgewatch.monitor.thresholds import threshold_for, uses_preconditioned_sharpness
from edgewatch.trial.batch import measure_batch_scaling
from edgewatch.trial.grid import TrialGrid, first_jump, jump_scaled, make_grid, scaled, stretched
from edgewatch.trial.report import Fix, PreflightReport
from edgewatch.trial.train import BatchLoss, BatchSource, ModelLoss, Trace, run_trial
from edgewatch.trial.verdict import Judgement, Rules, judge

LAG = 5  # trial steps between an LR too high and the loss showing it
FIX_CAP = 0.8  # a lower peak starts at this share of the highest LR that was safe
MAX_FIXES = 8  # candidate plans tried at most
SHRINK = 3.0  # each lower peak tried is this much under the last


def preflight(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    probe: ModelLoss,
    scheduler: Any = None,
    *,
    steps: int = 200,
    batches: Callable[[], Any] | Iterable[Any],
    loss: BatchLoss,
    total_steps: int | None = None,
    time_budget: float = 180.0,
    clip: float | None = None,
    target_batches: Callable[[], Any] | Iterable[Any] | None = None,
    fix: bool = True,
    rules: Rules | None = None,
) -> PreflightReport:
    """Train a copy of ``model`` and ``optimizer`` through ``steps`` steps of the plan and
    judge it (see README, "Pre-flight"). Nothing of the caller's changes: parameters,
    optimizer and scheduler state, the global RNG states of torch, Python and NumPy.

    ``probe(model) -> loss`` on a fixed small batch (it is given the copy);
    ``loss(model, batch) -> loss`` of one training batch; ``batches``: a zero-argument
    callable returning the next batch, or an iterable of batches (re-iterated by each
    trial when it can be); ``scheduler``: a torch LR scheduler or a function step -> LR
    (None: the optimizer's LR throughout), read ahead ``total_steps`` (default 4096)
    steps on a private copy; ``clip``: the run's gradient clipping (max norm);
    ``target_batches``: batches at the batch size the job will use, when it is not the
    trial's (the report then says how the threshold moves); ``time_budget``: seconds for
    everything (a trial cut short says so).
    """
    for name, fn in (("probe", probe), ("loss", loss)):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    started = time.monotonic()
    deadline = started + time_budget
    plan = planned_lrs(scheduler, optimizer, total_steps or PLAN_STEPS)
    grid = make_grid(plan, steps)
    group = optimizer.param_groups[0]
    description = {
        "kind": type(optimizer).__name__,
        "momentum": group.get("momentum"),
        "nesterov": group.get("nesterov", False),
        "betas": group.get("betas"),
    }
    constant = threshold_for(description, 1.0)  # threshold × LR: 2, 2 + 2β, 38, ...
    preconditioned = uses_preconditioned_sharpness(description["kind"])
    settle = PredictorSettings().settle_steps if preconditioned else 0
    rules = rules or Rules(settle=settle)
    source = BatchSource(batches)

    def trial(g: TrialGrid, label: str) -> tuple[Trace, Judgement]:
        trace = run_trial(
            model, optimizer, probe, loss, source, list(g.plan_steps), list(g.lrs),
            deadline=deadline, clip=clip, label=label,
        )  # fmt: skip
        return trace, judge_trace(trace, constant, rules)

    trace, j = trial(grid, "plan")
    safe_lr = highest_safe_lr(trace, j)
    found = None
    if fix and j.verdict != "safe":
        found = search_fix(
            lambda s: plan[min(s, len(plan) - 1)], grid, j, trace, safe_lr, steps, trial, deadline
        )
    scaling = None
    if target_batches is not None and trace.twin is not None:
        twin, opt = trace.twin
        scaling = measure_batch_scaling(
            twin, opt, loss, source.reader(), BatchSource(target_batches).reader(),
            constant, preconditioned, grid.peak_lr, j.peak_ratio,
        )  # fmt: skip
    return PreflightReport(
        verdict=j.verdict, reason=j.reason, optimizer=description["kind"],
        preconditioned=preconditioned, peak_lr=grid.peak_lr, peak_step=grid.peak_step,
        warmup_steps=grid.warmup_steps, trial_steps=len(trace.lrs), stride=grid.stride,
        plan_steps=trace.plan_steps[-1] if trace.plan_steps else 0, max_ratio=j.max_ratio,
        peak_ratio=j.peak_ratio, crossing=j.crossing, loss_peak=j.loss_peak,
        recovered=j.recovered, flattened=j.flattened, safe_lr=safe_lr, fix=found,
        batch=scaling, seconds=time.monotonic() - started, truncated=trace.truncated,
        curves=curves(trace, constant),
    )  # fmt: skip


def planned_lrs(scheduler: Any, optimizer: torch.optim.Optimizer, count: int) -> list[float]:
    """The plan's LR for steps 0..count-1, read on a private copy of the scheduler."""
    source = PlanSource.create(scheduler, optimizer)
    if source is None:
        return [float(optimizer.param_groups[0]["lr"])] * count
    return source.snapshot(0).lrs(count)


def judge_trace(trace: Trace, constant: float, rules: Rules) -> Judgement:
    estimates = [(e.trial_step, e.plan_step, e.lr, e.value) for e in trace.estimates]
    return judge(trace.losses, estimates, constant, rules, trace.stopped)


def highest_safe_lr(trace: Trace, j: Judgement) -> float | None:
    """The highest LR the trial trained at, LAG steps or more before trouble began."""
    if j.verdict == "safe":
        return max(trace.lrs, default=None)
    end = len(trace.lrs) if j.trouble is None else j.trouble - LAG
    if j.crossing is not None:
        end = min(end, next(i for i, s in enumerate(trace.plan_steps) if s >= j.crossing[0]))
    return max(trace.lrs[: max(0, end)], default=None)


def search_fix(
    plan: Callable[[int], float],
    grid: TrialGrid,
    j: Judgement,
    trace: Trace,
    safe_lr: float | None,
    steps: int,
    trial: Callable[[TrialGrid, str], tuple[Trace, Judgement]],
    deadline: float,
) -> Fix | None:
    """Try candidate plans, the one closest to the original first; the first safe one."""
    length = max(grid.plan_steps) + 1
    candidates: list[tuple[Callable[[int], float], float, int, str]] = []
    if grid.warmup_steps > 1 and j.trouble is not None:
        trouble_step = trace.plan_steps[min(j.trouble, len(trace.plan_steps) - 1)]
        if trouble_step <= grid.warmup_steps + grid.stride * LAG:
            for factor in (2.0, 4.0):  # the same peak, reached later
                warm = grid.warmup_steps
                fn = stretched(plan, warm, factor)
                candidates.append((fn, grid.peak_lr, round(warm * factor), "warmup"))
    # A lower peak: below the highest LR that was safe, else a tenth of the peak, and
    # lower by SHRINK each time. A scheduled jump is cut down (the plan before and after
    # it kept); otherwise the plan's shape is scaled (its warmup and decay kept).
    peak = FIX_CAP * safe_lr if safe_lr else grid.peak_lr / 10
    at = first_jump([plan(s) for s in range(length)], grid.warmup_steps + 1)
    if at is not None and _trouble_step(j, trace) >= at - grid.stride:
        # The loss shows trouble some steps after its cause; after a jump, those steps
        # were at the jumped LR, which is then no safe LR: the plan's before the jump is.
        peak = FIX_CAP * max(plan(s) for s in range(at))
    for _ in range(MAX_FIXES):
        if at is not None:
            factor = min(1.0, peak / plan(at))
            candidates.append((jump_scaled(plan, at, factor), peak, grid.warmup_steps, "jump"))
        else:
            factor = peak / grid.peak_lr
            candidates.append((scaled(plan, factor), peak, grid.warmup_steps, "scale"))
        peak /= SHRINK
    best = None
    for fn, top, warmup, kind in candidates[: MAX_FIXES + 2]:
        if time.monotonic() > deadline:
            break
        span = length + max(0, warmup - grid.warmup_steps)
        g = make_grid([fn(s) for s in range(span)], steps)
        t, k = trial(g, f"fix (peak {top:.3g}, warmup {warmup})")
        if t.truncated:
            break
        if k.verdict == "safe":
            return Fix(top, warmup, k.verdict, k.max_ratio, kind, at if kind == "jump" else None)
        if k.verdict == "borderline" and best is None:
            best = Fix(top, warmup, k.verdict, k.max_ratio, kind, at if kind == "jump" else None)
    return best


def _trouble_step(j: Judgement, trace: Trace) -> int:
    """The plan step where the trial first went wrong (the crossing or the loss)."""
    steps = [] if j.crossing is None else [j.crossing[0]]
    if j.trouble is not None and trace.plan_steps:
        steps.append(trace.plan_steps[min(j.trouble, len(trace.plan_steps) - 1)])
    return min(steps, default=len(trace.plan_steps) and trace.plan_steps[-1])


def curves(trace: Trace, constant: float) -> dict[str, list[float]]:
    return {
        "plan_step": [float(s) for s in trace.plan_steps],
        "lr": list(trace.lrs),
        "loss": list(trace.losses),
        "est_trial": [float(e.trial_step) for e in trace.estimates],
        "est_step": [float(e.plan_step) for e in trace.estimates],
        "est_lr": [e.lr for e in trace.estimates],
        "est_ratio": [e.value * e.lr / constant for e in trace.estimates],
    }
