"""Calibrate the families: train the whole grid once (both monitors, real client, real
daemon on SQLite) and count what the labels make of it.

Prints per family: runs, MAJOR and DIVERGENCE events (bench/instability/scoring.py's labels, on the
label loss), event-free runs, wall seconds; the share of event-free runs overall; the
corpus hash of the language-model families; sharpness estimates per 1000 steps at each
budget; and every run where the gradient norm edgewatch stored differs from the
harness's own pre-clip norm. Saves the RunResults (bench/out/calibrate.json, or --out)
for bench/instability/predict.py to reuse; the database is bench/out/calibrate.db.

Usage (from the repository root):
  .venv/bin/python -m bench.instability.calibrate --seeds 0 1
  .venv/bin/python -m bench.instability.calibrate --seeds 0 --families char_gpt --bare
  (--bare: no monitors)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

from bench.common import OUT, daemon_process, machine
from bench.instability.families import FAMILIES, RunSpec, specs
from bench.instability.harness import RunResult, run
from bench.instability.scoring import excursions, scored
from edgewatch.server.store import Store
from edgewatch_testkit.corpus import corpus_hash

BUDGETS = (0.02,)  # the default budget, the benchmark's only one
GRAD_RTOL = 1e-4  # float32 norms of the same gradients, summed in another order


def main() -> int:
    args = parse()
    torch.set_num_threads(1)
    chosen = specs(args.seeds, args.families)
    if args.only:
        chosen = [s for s in chosen if any(part in s.name for part in args.only)]
    print(f"{len(chosen)} runs; {machine()}; corpus {corpus_hash()}", flush=True)
    OUT.mkdir(exist_ok=True)
    db = args.db or OUT / "calibrate.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    started = time.monotonic()
    if args.bare:
        results = train_all(chosen, None, ())
    else:
        with daemon_process(url) as (endpoint, _):
            results = train_all(chosen, endpoint, BUDGETS)
    wall = time.monotonic() - started
    out = args.out or OUT / "calibrate.json"
    out.write_text(json.dumps([dataclasses.asdict(r) for r in results]))
    print()
    print("\n".join(table(results)))
    print(f"\nTotal wall time {wall:.0f} s ({len(results)} runs). Saved {out}.")
    if not args.bare:
        print("\n".join(stored_checks(Store(url), results)))
    return 0


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES))
    parser.add_argument("--only", nargs="+", help="runs whose name contains one of these")
    parser.add_argument("--bare", action="store_true", help="no daemon, no monitors")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--db", type=Path)
    return parser.parse_args()


def train_all(
    chosen: list[RunSpec], endpoint: str | None, budgets: tuple[float, ...]
) -> list[RunResult]:
    results = []
    for i, spec in enumerate(chosen, 1):
        result = run(spec, endpoint, budgets)
        results.append(result)
        print(f"  [{i}/{len(chosen)}] {describe(result)}", flush=True)
    return results


def describe(r: RunResult) -> str:
    events = scored(excursions(r.label_loss))
    kinds = ", ".join(f"{e.kind}@{e.onset}" for e in events) or "event-free"
    finite = [v for v in r.label_loss if math.isfinite(v)]
    per_step = 1000 * r.seconds / max(1, len(r.label_loss))
    return (
        f"{r.spec.job}: {len(r.label_loss)}/{r.spec.steps} steps, {kinds}; label "
        f"{r.label_loss[0]:.3g} -> min {min(finite):.3g} -> last {r.label_loss[-1]:.3g}; "
        f"{r.seconds:.1f} s ({per_step:.1f} ms/step, median training step "
        f"{1000 * r.median_step:.2f} ms, label {r.label_seconds:.1f} s, "
        f"curvature {', '.join(f'{k}: {v:.1f} s' for k, v in r.curvature_seconds.items())})"
    )


def table(results: list[RunResult]) -> list[str]:
    lines = [
        "| family | runs | MAJOR | DIVERGENCE | event-free runs | of which end unrecovered "
        "| steps | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = ("runs", "major", "divergence", "free", "unrecovered", "steps", "seconds")
    total = dict.fromkeys(names, 0.0)
    for family in dict.fromkeys(r.spec.family for r in results):
        c = dict.fromkeys(names, 0.0)
        for r in results:
            if r.spec.family == family:
                events = excursions(r.label_loss)
                kinds = [e.kind for e in scored(events)]
                c["runs"] += 1
                c["major"] += kinds.count("major")
                c["divergence"] += kinds.count("divergence")
                c["free"] += not kinds
                # 2-10x above its best at the end: not scored, yet no healthy run
                c["unrecovered"] += not kinds and any(e.kind == "unrecovered" for e in events)
                c["steps"] += len(r.label_loss)
                c["seconds"] += r.seconds
        total = {k: total[k] + v for k, v in c.items()}
        lines.append(_row(family, c))
    lines.append(_row("**all**", total))
    share = total["free"] / max(1, total["runs"])
    lines.append(f"\nEvent-free runs: {total['free']:.0f} of {total['runs']:.0f} ({share:.0%}).")
    return lines


def _row(name: str, c: dict[str, float]) -> str:
    return (
        f"| {name} | {c['runs']:.0f} | {c['major']:.0f} | {c['divergence']:.0f} | "
        f"{c['free']:.0f} | {c['unrecovered']:.0f} | {c['steps']:.0f} | {c['seconds']:.0f} |"
    )


def stored_checks(store: Store, results: list[RunResult]) -> list[str]:
    """Sharpness estimates per 1000 steps, and stored gradient norms against the harness's."""
    jobs = {j["job_id"]: j["pk"] for j in store.jobs()}
    estimates: dict[str, list[float]] = {}
    mismatched = []
    for r in results:
        for key, job in r.jobs.items():
            pk = jobs.get(job)
            if pk is None:
                mismatched.append(f"- {job}: not in the database")
                continue
            n = len(r.label_loss)
            estimates.setdefault(key, []).append(1000 * store.count("sharpness", pk) / n)
            stored = {s["step"]: s["grad_norm"] for s in store.steps(pk, limit=1_000_000)}
            bad = [
                (t, stored.get(t), mine)
                for t, mine in enumerate(r.grad_norm)
                if not _close(stored.get(t), mine)
            ]
            if bad:
                t, theirs, mine = bad[0]
                mismatched.append(
                    f"- {job}: {len(bad)} of {n} steps differ (first: step {t}, stored "
                    f"{theirs}, pre-clip {mine:.6g}; clip {r.spec.get('clip')})"
                )
    lines = [""]
    for key, per_run in estimates.items():
        mean = sum(per_run) / len(per_run)
        lines.append(f"Budget {key}: {mean:.1f} sharpness estimates per 1000 steps (mean).")
    lines.append(
        f"Stored grad_norm against the harness's pre-clip norm (rtol {GRAD_RTOL}): "
        + (f"{len(mismatched)} jobs differ:" if mismatched else "all equal.")
    )
    return lines + mismatched


def _close(stored: float | None, mine: float) -> bool:
    if stored is None:
        return False
    if not (math.isfinite(stored) and math.isfinite(mine)):
        return math.isnan(stored) == math.isnan(mine) and (stored == mine or math.isnan(mine))
    return abs(stored - mine) <= GRAD_RTOL * max(abs(mine), 1e-12)


if __name__ == "__main__":
    sys.exit(main())
