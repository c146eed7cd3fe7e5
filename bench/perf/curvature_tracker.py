"""The sharpness tracker as it runs in training (bench/perf/curvature.py --only tracker).

For each problem the training loop calls ``tracker.advance()`` after each optimizer step
while an estimate is in progress, and starts one every EVERY steps; each finished
estimate is compared with the truth at the parameters of its last slice: the dense
Hessian's top eigenvalue (exact problems) or a long cold Lanczos run to 1e-7 (the
nanoGPT-shaped GPT of ``edgewatch_testkit/gpt.py`` on the corpus of
``edgewatch_testkit/corpus.py``). Reported with the library's own stopping rule and defaults.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from edgewatch.monitor import (
    SharpnessTracker,
    adam_preconditioner,
    critical_sharpness,
    top_eigenvalue,
    update_direction,
)
from edgewatch.monitor.hvp import HessianOperator
from edgewatch.monitor.tracking import TOL
from edgewatch_testkit import corpus
from edgewatch_testkit.curvature_problems import make_problem
from edgewatch_testkit.gpt import GPT, next_token_loss


def exact_families(q: bool, restart: str) -> list[tuple[str, list[tuple]]]:
    families = [
        ("MLP-841 MSE, GD η=0.2", "mse", "gd", 0.2, 300, 6),
        ("MLP-841 CE, GD η=0.5", "ce", "gd", 0.5, 200, 5),
        ("MLP-841 MSE, Adam", "mse", "adam", 3e-3, 200, 5),
    ]
    out = []
    for name, kind, opt_name, lr, steps, every in families:
        steps = steps // 3 if q else steps
        problem = make_problem(kind, "init")
        params = list(problem.model.parameters())
        opt: torch.optim.Optimizer = (
            torch.optim.SGD(params, lr=lr) if opt_name == "gd" else torch.optim.Adam(params, lr=lr)
        )
        tracker = SharpnessTracker(problem.model, problem.probe, opt, seed=1, restart=restart)
        rows = []
        for step in range(steps):
            opt.zero_grad()
            problem.probe().backward()
            opt.step()
            if tracker.in_progress or step % every == 0:
                est = tracker.advance()
                if est is None:
                    continue
                dense = problem.dense_hessian()
                scale = adam_preconditioner(opt, params) if opt_name == "adam" else None
                if scale is not None:
                    d = scale.numpy()
                    dense = d[:, None] * dense * d[None, :]
                truth = float(np.linalg.eigvalsh(dense)[-1])
                rows.append((est, truth))
        out.append((name, rows))
    return out


def row(name: str, rows: list[tuple], seconds: str = "") -> str:
    rows = rows[1:]  # the first estimate is cold by construction
    warm = [(e, t) for e, t in rows if not e.restarted]
    rest = [(e, t) for e, t in rows if e.restarted]
    err = np.array([abs(e.value - t) / abs(t) for e, t in rows if e.converged])
    werr = np.array([abs(e.value - t) / abs(t) for e, t in warm if e.converged])
    hv = np.array([e.matvecs for e, _ in warm])
    rhv = np.array([e.matvecs for e, _ in rest]) if rest else np.array([np.nan])
    slices = np.array([e.slices for e, _ in rows])
    failed = sum(1 for e, _ in rows if not e.converged)
    return (
        f"| {name} | {len(rows)} ({len(rest)} restarted, {failed} not converged) | "
        f"{np.median(hv):.0f} / {np.percentile(hv, 90):.0f} | "
        f"{np.median(werr):.1e} / {np.percentile(werr, 90):.1e} / {werr.max():.1e} | "
        f"{np.median(rhv):.0f} | {np.percentile(err, 90):.1e} / {err.max():.1e} | "
        f"{np.median(slices):.0f} / {slices.max():.0f} | "
        f"{np.mean([e.matvecs for e, _ in rows]):.1f} | {_all_hvps(rows)} | {_stops(rows)} |"
        f"{seconds}"
    )


def _all_hvps(rows: list[tuple]) -> str:
    """HVPs per estimate, warm and restarted together: median / p90."""
    hv = np.array([e.matvecs for e, _ in rows])
    return f"{np.median(hv):.0f} / {np.percentile(hv, 90):.0f}"


def _stops(rows: list[tuple]) -> str:
    """Share converged, and how the estimates stopped (bound / stagnation / HVP cap)."""
    stops = [getattr(e, "stopped", "bound" if e.converged else "budget") for e, _ in rows]
    share = sum(e.converged for e, _ in rows) / len(rows)
    counts = " / ".join(str(stops.count(k)) for k in ("bound", "stagnation", "budget"))
    return f"{share:.0%} ({counts})"


def nanogpt(q: bool, restart: str) -> tuple[str, str]:
    torch.manual_seed(0)
    ids = corpus.train_tokens()
    context, batch = 64, 16
    model = GPT(corpus.VOCAB, context, d=128, layers=2, heads=4, nanogpt_init=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    probe_batch = torch.stack([ids[i : i + context + 1] for i in range(0, 8 * 997, 997)][:8])

    def probe() -> torch.Tensor:
        return next_token_loss(model, probe_batch)

    tracker = SharpnessTracker(model, probe, opt, seed=0, restart=restart)
    steps, every = (60, 10) if q else (200, 10)
    rows, step_seconds, slice_seconds, refs = [], [], [], 0.0
    crit = []
    for step in range(steps):
        starts = torch.randint(0, len(ids) - context - 1, (batch,), generator=g)
        xb = torch.stack([ids[s : s + context + 1] for s in starts])
        t0 = time.perf_counter()
        loss = next_token_loss(model, xb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step_seconds.append(time.perf_counter() - t0)
        if not (tracker.in_progress or step % every == 0):
            continue
        before = tracker.hvps_total
        t0 = time.perf_counter()
        est = tracker.advance()
        slice_seconds.append((time.perf_counter() - t0, tracker.hvps_total - before))
        if est is None:
            continue
        t0 = time.perf_counter()
        params = list(model.parameters())
        op = HessianOperator(params, probe, adam_preconditioner(opt, params))
        ref = top_eigenvalue(
            op, op.dim, tol=1e-7, max_iter=120, generator=torch.Generator().manual_seed(step)
        )
        refs += time.perf_counter() - t0
        rows.append((est, ref.value))
        u = update_direction(opt, params)
        if u is not None:
            t0 = time.perf_counter()
            c = critical_sharpness(model, probe, u, opt.param_groups[0]["lr"])
            crit.append((c.forwards, time.perf_counter() - t0, c.eta_c, est.eta_max))
    step_time = float(np.median(step_seconds))
    per_hvp = [s / h for s, h in slice_seconds if h > 0]
    slice_cost = np.array([s for s, _ in slice_seconds]) / step_time
    n_params = sum(p.numel() for p in model.parameters())
    name = (
        f"GPT {n_params / 1e6:.2f}M (2 layers, d 128, context 64, vocab {corpus.VOCAB}, SDPA, "
        f"AdamW, probe 8×64), {steps} steps"
    )
    cf = np.array(crit) if crit else np.full((1, 4), np.nan)
    notes = (
        f"{name}: training step {1000 * step_time:.0f} ms (median); one HVP "
        f"{np.median(per_hvp) / step_time:.1f} steps; one slice (probe graph + ≤ 2 HVPs, + 1 "
        f"on the finishing slice) median {np.median(slice_cost):.1f}, max "
        f"{slice_cost.max():.1f} steps. Critical sharpness: {np.median(cf[:, 0]):.0f} forwards "
        f"(max {cf[:, 0].max():.0f}), {np.median(cf[:, 1]) / step_time:.1f} steps; η_c "
        f"median {np.median(cf[:, 2]):.3g} against η_max along u {np.median(cf[:, 3]):.3g} "
        f"(LR 1e-3). Reference Lanczos runs: {refs:.0f} s."
    )
    return row(name, rows), notes


def tracker_section(q: bool) -> None:
    print(
        f"\nTracker as run in training (tol {TOL:g}, 2 HVPs per step, at most 30 per "
        "estimate; first estimate cold and left out).\n"
    )
    print(
        "| problem, restart | estimates | warm HVPs at stop: median / p90 | warm error at "
        "stop: median / p90 / max | restarted HVPs: median | converged error: p90 / max | "
        "slices: median / max | mean HVPs per estimate | all HVPs: median / p90 | "
        "converged (stopped on bound / stagnation / cap) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    notes = []
    for restart in ("neighbourhood", "random"):
        for name, rows in exact_families(q, restart):
            print(row(f"{name}, {restart}", rows), flush=True)
        if restart == "neighbourhood":
            line, note = nanogpt(q, restart)
            print(line.replace(" steps |", f" steps, {restart} |", 1), flush=True)
            notes.append(note)
    print("\n" + "\n".join(notes))
