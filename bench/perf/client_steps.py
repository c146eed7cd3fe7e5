"""Step times of a nanoGPT-sized transformer with and without edgewatch, side by side.

Three copies of the same training run (the char_gpt family's model: 2 layers, d 128,
context 64, batch 16, AdamW, clipping at 1.0; Python's own sources as text) run in
alternating blocks in one process, against ``edgewatch serve`` in its own process:

- bare: the loop alone;
- hook: edgewatch attached without a probe (the per-step hook, chunks, sender);
- curvature: edgewatch with a probe of 4 fixed sequences at the default budget 0.02, its
  budget counted on its own loop's clock (the other loops' time lent out), told the LR
  plan (linear warmup over WARMUP steps, then cosine: ``scheduler=``) and ``total_steps``;
- curvature-differences: the same with the tracker's opt-in difference products,
  ``SharpnessTracker(hvp="auto")`` (``monitor/difference.py``): what they buy, side by
  side with the default's exact (double-backward) products.

Every step's time is kept: the p50, p99 and worst step of each, the worst step's excess
over the bare p50 (the longest a training step waited for edgewatch), the curvature
share of the monitored loop's time, the λ_max estimates per 1000 steps and per reason
(client/curvature.py), each estimate (its reason, HVPs, slices, warm or cold start,
and whether it ended on its bound, on stagnation or at its budget's cap), and the
estimate nearest before the end of the warmup (the schedule should give one within
its horizon, 100 steps, of the LR's peak).

Usage: python -m bench.perf.client_steps [--steps 1500] [--block 50]
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

import edgewatch
from bench.common import daemon_process, header
from edgewatch.monitor.progress import TrackedEstimate
from edgewatch_testkit import corpus
from edgewatch_testkit.gpt import GPT, adamw_groups, next_token_loss

CONTEXT, D, LAYERS, HEADS, BATCH, PROBE = 64, 128, 2, 4, 16, 4
WARMUP = 1000


def warmup_cosine(step: int, total: int) -> float:
    """Linear warmup over WARMUP steps, then cosine to zero at the run's end."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (total - WARMUP)))


class Loop:
    """One training run, advanced block by block, timing each step."""

    def __init__(self, name: str, endpoint: str, total_steps: int) -> None:
        self.total_steps = total_steps
        torch.manual_seed(0)
        self.name = name
        self.model = GPT(corpus.VOCAB, CONTEXT, D, LAYERS, HEADS)
        self.optimizer = torch.optim.AdamW(adamw_groups(self.model, 0.1), lr=1e-3)
        self.batch = corpus.batch_sampler(0, BATCH, CONTEXT)
        probe_rows = corpus.fixed_windows(corpus.train_tokens(), PROBE, CONTEXT)
        self.times: list[float] = []
        self.own = 0.0  # this loop's own seconds (the budget's clock)
        self.step = 0
        self.finished: list[tuple[int, str, TrackedEstimate | None]] = []  # step, reason, it
        # A function of its own, not a bound method: the plan is copied ahead (deepcopy),
        # and a method would drag the loop, its monitor and its threads along.
        plan = functools.partial(warmup_cosine, total=total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, plan)
        self.mon: edgewatch.Monitor | None = None
        self.stats: dict[str, int] = {}
        if name != "bare":
            curvature = name.startswith("curvature")
            probe = (lambda: next_token_loss(self.model, probe_rows)) if curvature else None
            self.mon = edgewatch.attach(
                self.optimizer, model=self.model, job=f"steps-{name}", endpoint=endpoint,
                probe=probe, probe_batch=PROBE if probe else None,
                scheduler=self.scheduler, total_steps=total_steps,
            )  # fmt: skip
            if self.mon.curvature is not None:
                self.mon.curvature.use_clock(lambda: self.own)
                if name == "curvature-differences":
                    self.mon.curvature.tracker.trust.hvp = "auto"

    @property
    def estimate_steps(self) -> list[int]:
        """The steps at which an estimate finished."""
        return [step for step, _, _ in self.finished]

    def block(self, steps: int) -> None:
        model, optimizer, mon = self.model, self.optimizer, self.mon
        for _ in range(steps):
            start = time.perf_counter()
            loss = next_token_loss(model, self.batch(self.step))
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            self.scheduler.step()
            if mon is not None:
                mon.step(loss)
                curvature = mon.curvature
                if curvature is not None and curvature.estimates > len(self.finished):
                    self.finished.append((self.step, curvature.reason, curvature.tracker.last))
            optimizer.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - start
            self.times.append(seconds)
            self.own += seconds
            self.step += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000, help="steps per loop")
    parser.add_argument("--block", type=int, default=50, help="steps per block")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core trains, the other is the daemon's
    with (
        tempfile.TemporaryDirectory() as tmp,
        daemon_process(f"sqlite:///{Path(tmp) / 'steps.db'}") as (endpoint, _),
    ):
        names = ("bare", "hook", "curvature", "curvature-differences")
        loops = [Loop(name, endpoint, args.steps) for name in names]
        # No warm-up: the first, cold estimate is part of what a run pays.
        for _ in range(args.steps // args.block):
            for loop in loops:
                loop.block(args.block)
        for loop in loops:
            if loop.mon is not None:
                loop.mon.close()
                loop.stats = loop.mon.stats
    report(loops, args)


def _quantile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def report(loops: list[Loop], args: argparse.Namespace) -> None:
    print(header("Step times with and without edgewatch, nanoGPT-sized transformer (CPU)",
                 f"make bench-client  (python -m bench.perf.client_steps --steps {args.steps} "
                 f"--block {args.block})"))  # fmt: skip
    params = sum(p.numel() for p in loops[0].model.parameters())
    print(
        f"GPT of {params:,} parameters (2 layers, d 128, context 64, batch 16), AdamW, "
        f"clipping at 1.0, torch.set_num_threads(1); {args.steps} steps per loop in "
        f"alternated blocks of {args.block}.\n"
    )
    bare = statistics.median(loops[0].times)
    print("| loop | p50 (ms) | p99 (ms) | worst (ms) | worst − bare p50 (ms) | p50 / bare p50 |")
    print("|---|---|---|---|---|---|")
    for loop in loops:
        t = loop.times
        p50, p99, worst = statistics.median(t), _quantile(t, 0.99), max(t)
        print(
            f"| {loop.name} | {p50 * 1e3:.1f} | {p99 * 1e3:.1f} | {worst * 1e3:.1f} | "
            f"{(worst - bare) * 1e3:.1f} | {p50 / bare:.3f} |"
        )
    for loop in loops[2:]:
        estimates(loop)


def estimates(loop: Loop) -> None:
    """What the loop's curvature budget bought, and where."""
    curvature = loop.mon.curvature if loop.mon else None
    if curvature is not None:
        steps = len(loop.times)
        stats = loop.stats
        reasons = ", ".join(
            f"{k.removeprefix('estimates_')} {v}"
            for k, v in stats.items()
            if k.startswith("estimates_")
        )
        share = curvature.spent / loop.own
        units = curvature.spending.units
        prices = ", ".join(
            f"{kind} {units[kind]} at {curvature.spending.per_unit(kind):.2f}" for kind in units
        )
        print(
            f"\n{loop.name} loop: {curvature.estimates} λ_max estimates in {steps} steps "
            f"({1000 * curvature.estimates / steps:.1f} per 1000 steps), {curvature.attempts} "
            f"slices, {share:.1%} of its time on curvature (budget 2%; charged in step "
            f"times: {stats['curvature_permille'] / 10:.1f}%); per reason: {reasons}; "
            f"estimates at steps {loop.estimate_steps}; {stats['curvature_hvps']} products; "
            f"probe evaluations by kind, at their price in step times: {prices}."
        )
        print("\n| step | reason | HVPs | slices | start | ended on | λ_max |")
        print("|---|---|---|---|---|---|---|")
        for step, reason, est in loop.finished:
            if est is not None:
                start = "cold or restarted" if est.restarted else "warm"
                print(
                    f"| {step} | {reason} | {est.matvecs} | {est.slices} | {start} | "
                    f"{est.stopped} | {est.value:.4g} |"
                )
        before = [s for s in loop.estimate_steps if s <= WARMUP]
        gap = WARMUP - max(before) if before else None
        print(
            f"End of warmup at step {WARMUP}: the last estimate before it at step "
            f"{max(before) if before else None} ({gap} steps before; settled: after step 50)."
        )


if __name__ == "__main__":
    main()
