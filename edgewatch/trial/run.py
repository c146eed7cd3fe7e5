"""``edgewatch.preflight``: judge a whole LR plan on a copy of the model, before the job.

One trial of the plan (``grid.py``: its first steps, compressed where it is long), a
verdict (``verdict.py``), and where it is not safe, trials of candidate fixes until one
is safe or the time budget is spent: a longer warmup to the same peak where the trouble
came in the warmup (the network flattens first: Kalra & Barkeshli 2024, arXiv
2406.09405), else a lower peak LR. Each fix reported was itself trained and measured.
"""

from __future__ import annotations

import dataclasses
import math
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
MAX_FIXES = 8  # lower peaks tried at most
SHRINK = 3.0  # each lower peak tried is this much under the last
REFINE = 2  # trials bisecting between the first safe peak and the lowest one not safe ...
REFINE_GAP = 1.3  # ... while they are more than this factor apart


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
    rules = rules or Rules(settle=settle, preconditioned=preconditioned)
    source = BatchSource(batches)

    # A plan recommended must be safe with a margin: its ratio under the edge for every
    # optimizer. Adam's own plan is judged by its loss (``verdict.py``), but a fix whose
    # ratio sat past the edge trained well for the trial and spiked later in the full
    # runs (digits_mlp's Adam, bench/RESULTS.md).
    sharpening = 0.0 if preconditioned else rules.sharpening  # Adam's growth: not followed
    strict = dataclasses.replace(rules, preconditioned=False, sharpening=sharpening)

    def trial(g: TrialGrid, label: str, judged_by: Rules = rules) -> tuple[Trace, Judgement]:
        trace = run_trial(
            model, optimizer, probe, loss, source, list(g.plan_steps), list(g.lrs),
            deadline=deadline, clip=clip, label=label,
        )  # fmt: skip
        return trace, judge_trace(trace, constant, judged_by)

    def fix_trial(g: TrialGrid, label: str) -> tuple[Trace, Judgement]:
        return trial(g, label, strict)

    trace, j = trial(grid, "plan")
    safe_lr = highest_safe_lr(trace, j)
    found = None
    if fix and j.verdict != "safe":
        found = search_fix(
            lambda s: plan[min(s, len(plan) - 1)], grid, j, trace, safe_lr, steps, fix_trial,
            deadline,
        )  # fmt: skip
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
    """The highest LR the trial trained at, LAG steps or more before trouble began (the
    loss) or before the crossing, and under the LR in force when it began: a constant LR
    that went wrong is no safe LR, however long it trained before the loss showed it."""
    starts = []  # (trial step where trouble began, the last trial step counted as safe)
    if j.trouble is not None:
        starts.append((j.trouble, j.trouble - LAG))
    if j.crossing is not None and j.ratio_judged:
        at = next(i for i, s in enumerate(trace.plan_steps) if s >= j.crossing[0])
        starts.append((at, at))
    if j.verdict == "safe" or not starts or not trace.lrs:
        return max(trace.lrs, default=None)
    began, end = min(starts)
    in_force = trace.lrs[min(began, len(trace.lrs) - 1)]
    return max((lr for lr in trace.lrs[: max(0, end)] if lr < in_force), default=None)


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
    """Try candidate plans, the one closest to the original first. A scheduled jump is
    first taken out: where that is safe, it is the fix (the LR the run had trained at
    for the steps before the jump, where a cut-down jump would be verified for the few
    updates of one trial only). Otherwise the first safe lower peak is raised towards
    the lowest peak that was not safe (``refine``): the fix is the highest peak that
    stayed safe in a trial, not the first rung of the ladder."""
    length = max(grid.plan_steps) + 1
    lrs = [plan(s) for s in range(length)]
    at = first_jump(lrs, grid.warmup_steps + 1)
    # Trouble before the jump (a crossing the run lived with, say): the jump is still what
    # is cut, but from the highest LR that was safe, not from the LR before it.
    after_jump = at is not None and _trouble_step(j, trace) >= at - grid.stride

    def candidate(peak: float, warmup: int, kind: str) -> tuple[Callable[[int], float], int]:
        """The plan a fix of ``kind`` at ``peak`` describes, and its length in steps."""
        if kind == "warmup":
            factor = warmup / grid.warmup_steps
            return stretched(plan, grid.warmup_steps, factor), length + warmup - grid.warmup_steps
        if kind == "jump" and at is not None:
            return jump_scaled(plan, at, min(1.0, peak / plan(at))), length
        return scaled(plan, peak / grid.peak_lr), length

    def attempt(peak: float, warmup: int, kind: str) -> tuple[Fix, bool] | None:
        """One trial of a candidate: (its Fix, whether it was safe); None: out of time."""
        if time.monotonic() > deadline:
            return None
        fn, span = candidate(peak, warmup, kind)
        g = make_grid([fn(s) for s in range(span)], steps)
        t, k = trial(g, f"fix (peak {peak:.3g}, warmup {warmup})")
        if t.truncated:
            return None
        fix = Fix(peak, warmup, k.verdict, k.max_ratio, kind, at if kind == "jump" else None)
        return fix, k.verdict == "safe"

    best: Fix | None = None  # the first borderline one, while no candidate is safe
    for warmup in _longer_warmups(grid, j, trace):
        tried = attempt(grid.peak_lr, warmup, "warmup")
        if tried is None:
            return best
        if tried[1]:
            return tried[0]
        best = best or (tried[0] if tried[0].verdict == "borderline" else None)
    kind = "jump" if at is not None else "scale"
    unsafe = plan(at) if at is not None else grid.peak_lr  # the lowest peak not safe
    for peak in _lower_peaks(lrs, grid, at if after_jump else None, safe_lr):
        tried = attempt(peak, grid.warmup_steps, kind)
        if tried is None:
            return best
        if tried[1] and kind == "jump":
            return tried[0]  # the jump taken out (or cut): the plan the run was already on
        if tried[1]:
            return refine(tried[0], unsafe, lambda p: attempt(p, grid.warmup_steps, kind))
        unsafe = peak
        best = best or (tried[0] if tried[0].verdict == "borderline" else None)
    return best


def refine(safe: Fix, unsafe: float, attempt: Callable[[float], tuple[Fix, bool] | None]) -> Fix:
    """Bisect (in log LR) between a safe peak and the lowest peak that was not: at most
    REFINE more trials, while the two are more than REFINE_GAP apart."""
    for _ in range(REFINE):
        if unsafe <= REFINE_GAP * safe.peak_lr:
            break
        tried = attempt(math.sqrt(safe.peak_lr * unsafe))
        if tried is None:
            break
        if tried[1]:
            safe = tried[0]
        else:
            unsafe = tried[0].peak_lr
    return safe


def _longer_warmups(grid: TrialGrid, j: Judgement, trace: Trace) -> list[int]:
    """The same peak reached 2× and 4× later, where the trouble came in the warmup (the
    network flattens first: Kalra & Barkeshli 2024)."""
    trouble_step = _trouble_plan_step(j, trace)
    if grid.warmup_steps <= 1 or trouble_step is None:
        return []
    if trouble_step > grid.warmup_steps + grid.stride * LAG:
        return []
    return [round(grid.warmup_steps * factor) for factor in (2.0, 4.0)]


def _lower_peaks(
    lrs: list[float], grid: TrialGrid, at: int | None, safe_lr: float | None
) -> list[float]:
    """Lower peaks to try, highest first, each SHRINK below the last. After a scheduled
    jump the first is the LR before it (the jump taken out): the loss shows trouble some
    steps after its cause, so the LRs trained after the jump are no safe LRs. Otherwise
    FIX_CAP of the highest LR that was safe, else a tenth of the peak."""
    if at is not None:
        first = max(lrs[:at])
        return [first] + [FIX_CAP * first / SHRINK**i for i in range(MAX_FIXES - 1)]
    first = FIX_CAP * safe_lr if safe_lr else grid.peak_lr / 10
    return [first / SHRINK**i for i in range(MAX_FIXES)]


def _trouble_plan_step(j: Judgement, trace: Trace) -> int | None:
    """The plan step where the trial first went wrong: the loss, or a crossing where the
    ratio is judged (``Judgement.trouble`` holds both); None where nothing did."""
    if j.trouble is None or not trace.plan_steps:
        return None
    return trace.plan_steps[min(j.trouble, len(trace.plan_steps) - 1)]


def _trouble_step(j: Judgement, trace: Trace) -> int:
    """The plan step where the trial first went wrong, else its last plan step."""
    step = _trouble_plan_step(j, trace)
    if step is not None:
        return step
    return trace.plan_steps[-1] if trace.plan_steps else 0


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
