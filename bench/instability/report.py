"""The tables of the instability benchmark's report (bench/instability/predict.py)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from bench.instability.harness import RunResult
from bench.instability.lofo import Case, LeftOut, Scorer, leave_one_family_out, replay
from bench.instability.scoring import (
    BASELINES,
    HEADER,
    INIT,
    RunScore,
    excursions,
    restrict,
    score_run,
    scored,
    summarize,
)
from edgewatch.monitor.forecast import ALARM_STATES, DEFAULT_SETTINGS, PredictorSettings
from edgewatch.monitor.thresholds import threshold_for, uses_preconditioned_sharpness
from edgewatch.server.config import TUNED

NAIVE = "naive ratio ≥ 1 (λ·η/c)"
EARLY = 50  # an event-free run must not alarm in its first EARLY steps


def describe_zoo(results: list[RunResult], corpus: str) -> list[str]:
    lines = [
        "| family | runs | MAJOR | DIVERGENCE | event-free runs | steps | training s |",
        "|---|---|---|---|---|---|---|",
    ]
    families: dict[str, list[RunResult]] = {}
    for r in results:
        families.setdefault(r.spec.family, []).append(r)
    free_total = 0
    for family, runs in families.items():
        kinds = [[e.kind for e in scored(excursions(r.label_loss))] for r in runs]
        free = sum(not k for k in kinds)
        free_total += free
        lines.append(
            f"| {family} | {len(runs)} | {sum(k.count('major') for k in kinds)} | "
            f"{sum(k.count('divergence') for k in kinds)} | {free} | "
            f"{sum(len(r.label_loss) for r in runs)} | {sum(r.seconds for r in runs):.0f} |"
        )
    share = free_total / max(1, len(results))
    return [
        *lines,
        "",
        f"{free_total} of {len(results)} runs ({share:.0%}) train fine (no MAJOR or "
        f"DIVERGENCE event). Character corpus: {corpus}.",
        "",
    ]


def naive_signal(case: Case) -> list[float]:
    """λ·η/c of the last λ_max estimate at the LR in force: the 'ratio ≥ 1' rule."""
    unit = threshold_for(case.optimizer, 1.0)
    out, last, lr = [], None, None
    estimates = {
        r.step: r.value  # type: ignore[attr-defined]
        for r in case.records
        if type(r).__name__ == "Sharpness" and r.method == "lanczos"  # type: ignore[attr-defined]
    }
    lrs = {r.step: r.lr for r in case.records if type(r).__name__ == "Step"}  # type: ignore[attr-defined]
    for t in range(len(case.label_loss)):
        last = estimates.get(t, last)
        lr = lrs.get(t, lr)
        out.append(0.0 if last is None or lr is None else last * lr / unit)
    return out


def baseline_signals(case: Case) -> dict[str, list[float]]:
    signals = {name: fn(case.loss, case.grad) for name, (fn, _) in BASELINES.items()}
    signals[NAIVE] = naive_signal(case)
    return signals


THRESHOLDS = {name: theta for name, (_, theta) in BASELINES.items()} | {NAIVE: 1.0}


def settle_step(case: Case) -> int:
    """Up to this step an event is pre-flight's job, not the online forecast's: no
    settled estimate can exist yet. INIT steps for SGD and heavy ball (no history), and
    Adam's settle period for Adam-type optimizers: the forecast leaves out estimates
    before its second moment has settled (monitor/crossing.py; Cohen et al. 2022)."""
    adam = uses_preconditioned_sharpness(str(case.optimizer.get("kind", "")))
    return DEFAULT_SETTINGS.settle_steps if adam else INIT


def online(score: RunScore, case: Case) -> RunScore:
    """Only the events the online forecast can be asked to foresee."""
    return restrict(score, lambda onset: onset > settle_step(case))


def preflight(score: RunScore, case: Case) -> RunScore:
    return restrict(score, lambda onset: onset <= settle_step(case))


def early_alarms(case: Case, settings: PredictorSettings) -> bool:
    """Whether the run alarmed within its first EARLY steps."""
    return any(a.step < EARLY and a.state in ALARM_STATES for a in replay(case, settings))


def alerts_per_event(case: Case, settings: PredictorSettings) -> list[int]:
    """State changes into alarm states within each scored event's window."""
    alerts = [a for a in replay(case, settings) if a.state in ALARM_STATES]
    counts = []
    for e in scored(excursions(case.label_loss)):
        assert e.onset is not None
        lo, hi = e.onset - 100, e.end + 10
        counts.append(sum(1 for a in alerts if lo <= a.step <= hi))
    return counts


def per_family_tables(title: str, cases: list[Case], left_out: list[LeftOut]) -> list[str]:
    """edgewatch (left-out scores) beside every baseline, per family and pooled, over the
    events after the settle step; the pre-flight events apart."""
    lines = [
        f"#### Left-out families, {title}",
        "",
        "Events whose onset comes before any settled estimate could exist (step "
        f"{INIT}, Adam-type optimizers step {DEFAULT_SETTINGS.settle_steps}) are pre-flight's "
        "job, not the online forecast's: they are left out of these tables and counted apart "
        "below. Baselines at equal false alarms: each at the threshold that gives it "
        "edgewatch's false-alarm rate on the same runs (chosen on the runs scored, which "
        "favours the baselines).",
        "",
    ]
    pooled: list[RunScore] = []
    everything: list[RunScore] = []
    baselines: dict[str, list[RunScore]] = {}
    apart: list[str] = []
    for held in left_out:
        family_cases = [c for c in cases if c.family == held.family]
        mine = [online(s, c) for s, c in zip(held.scores, family_cases, strict=True)]
        pooled += mine
        everything += held.scores
        ew = summarize(mine)
        lines += [
            f"Family **{held.family}** (settings tuned on the others: {brief(held.settings)}):",
            "",
        ]
        lines += [HEADER, ew.row("**edgewatch**")]
        for name, per_case in _baseline_scores(family_cases).items():
            per_case = [online(s, c) for s, c in zip(per_case, family_cases, strict=True)]
            baselines.setdefault(name, []).extend(per_case)
            lines.append(summarize(per_case).row(name))
        lines += _equal_false_alarms(family_cases, ew.false_per_1000, header=False)
        lines.append("")
        apart.append(_preflight_row(held.family, held.scores, family_cases))
    ew = summarize(pooled)
    lines += ["Pooled over the left-out families:", "", HEADER, ew.row("**edgewatch** (left out)")]
    for name, per_case in baselines.items():
        lines.append(summarize(per_case).row(name))
    lines += _equal_false_alarms(cases, ew.false_per_1000, header=False)
    lines.append(summarize(everything).row("edgewatch, pre-flight events included"))
    lines += [
        "",
        "Pre-flight events (onset at or before the settle step), edgewatch left out as above:",
        "",
        "| family | events | MAJOR | DIVERGENCE | alarm by onset + 2 | Recall@1 | Recall@5 |",
        "|---|---|---|---|---|---|---|",
        *apart,
        _preflight_row(
            "**all**", [s for h in left_out for s in h.scores], _in_order(cases, left_out)
        ),
    ]
    early = [
        early_alarms(c, h.settings)
        for h in left_out
        for c in cases
        if c.family == h.family and not scored(excursions(c.label_loss))
    ]
    changes = [
        n
        for h in left_out
        for c in cases
        if c.family == h.family
        for n in alerts_per_event(c, h.settings)
    ]
    lines += [
        "",
        f"Event-free runs alarmed in their first {EARLY} steps: {sum(early)} of {len(early)}. "
        f"Alarm-state changes per event: mean {statistics.fmean(changes) if changes else 0:.2f}, "
        f"max {max(changes, default=0)} (target ≤ 2).",
        "",
    ]
    return lines


def _in_order(cases: list[Case], left_out: list[LeftOut]) -> list[Case]:
    return [c for h in left_out for c in cases if c.family == h.family]


def _preflight_row(name: str, scores: list[RunScore], cases: list[Case]) -> str:
    early = [preflight(s, c) for s, c in zip(scores, cases, strict=True)]
    kinds = [k for s in early for k in s.kinds]
    caught = sum(1 for s in early for lead in s.leads if lead is not None)
    summary = summarize(early)
    return (
        f"| {name} | {len(kinds)} | {kinds.count('major')} | {kinds.count('divergence')} | "
        f"{caught} | {summary.recall[1]:.2f} | {summary.recall[5]:.2f} |"
    )


def _baseline_scores(cases: list[Case]) -> dict[str, list[RunScore]]:
    out: dict[str, list[RunScore]] = {}
    for case in cases:
        for name, signal in baseline_signals(case).items():
            alarmed = [v >= THRESHOLDS[name] for v in signal]
            out.setdefault(name, []).append(score_run(case.label_loss, alarmed))
    return out


def _equal_false_alarms(cases: list[Case], target: float, header: bool = True) -> list[str]:
    """Each baseline at the threshold giving it edgewatch's false-alarm rate, over the
    events after the settle step: table rows (under a heading of their own if ``header``)."""
    from bench.instability.scoring import threshold_for_false_rate

    rows = []
    signals = [baseline_signals(c) for c in cases]
    for name in THRESHOLDS:
        runs = [(c.label_loss, s[name]) for c, s in zip(cases, signals, strict=True)]
        theta = threshold_for_false_rate(runs, target)
        scores = [
            online(score_run(loss, [v >= theta for v in s]), c)
            for (loss, s), c in zip(runs, cases, strict=True)
        ]
        rows.append(summarize(scores).row(f"{name}, at equal false alarms (θ = {theta:.3g})"))
    if not header:
        return rows
    return ["", f"At edgewatch's false-alarm rate ({target:.2f} / 1000 steps):", "", HEADER, *rows]


def brief(settings: PredictorSettings) -> str:
    """The tuned knobs (the daemon's ``forecast_*`` settings) and noise band, in words."""
    names = [*TUNED, "noise_band"]
    return ", ".join(f"{name} {_fmt(getattr(settings, name))}" for name in names)


def _fmt(value: float) -> str:
    return "off" if value == math.inf else f"{value:g}"


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def ablation(
    scorer: Scorer, grid: Mapping[str, Sequence[Any]], signals: dict[str, str]
) -> list[str]:
    """The pooled left-out score with each signal off, and with it alone."""
    lines = ["#### What each signal adds (left-out families, pooled)", "", HEADER]
    rows: list[tuple[str, dict[str, float]]] = [("all signals", {})]
    rows += [(f"without {name}", {knob: math.inf}) for name, knob in signals.items()]
    rows += [
        (f"{name} alone", {k: math.inf for k in signals.values() if k != knob})
        for name, knob in signals.items()
    ]
    for label, fixed in rows:
        held = leave_one_family_out(scorer, grid, fixed)
        lines.append(summarize([s for h in held for s in h.scores]).row(label))
    return [*lines, ""]


def live_check(cases: list[Case], settings: PredictorSettings) -> list[str]:
    """The daemon's own alerts (shipped defaults, live) against a replay of what it stored."""
    same = sum(1 for c in cases if c.live == [(a.step, a.state) for a in replay(c, settings)])
    return [
        f"Live alerts (the daemon's, shipped defaults) equal a replay of the stored records "
        f"in {same} of {len(cases)} runs.",
        "",
    ]


def spending(results: list[RunResult], cases: list[Case], key: str) -> list[str]:
    """Per family: what the budget bought (estimates, HVPs, convergence, from the stored
    Sharpness records) and what it cost, in step times (the harness's curvature clock)."""
    lines = [
        f"Budget {key}. Curvature cost in units of the run's median training step (the "
        "clock the budget is counted on, bench/instability/harness.py); HVPs per estimate from the "
        "stored records (``matvecs``); converged: the estimate stopped on its error bound or "
        "on stagnation, not at its HVP cap (the tracker's 30, or less where the budget left "
        "less: ``mon.stats['unconverged_estimates']``).",
        "",
        "| family | runs | s per run | median step ms | estimates per run | per 1000 steps "
        "| HVPs per estimate (median, p90) | converged | curvature / training time "
        "(median, max) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_family: dict[str, list[tuple[RunResult, Case]]] = {}
    for r, c in zip(results, cases, strict=True):
        by_family.setdefault(r.spec.family, []).append((r, c))
    for family, pairs in by_family.items():
        hvps = [
            rec.matvecs  # type: ignore[attr-defined]
            for _, c in pairs
            for rec in c.records
            if type(rec).__name__ == "Sharpness" and rec.method == "lanczos"  # type: ignore[attr-defined]
        ]
        steps = sum(len(r.label_loss) for r, _ in pairs)
        shares = [
            r.curvature_seconds[key] / (r.median_step * len(r.label_loss))
            for r, _ in pairs
            if r.median_step > 0 and r.label_loss
        ]
        p90 = sorted(hvps)[math.ceil(0.9 * len(hvps)) - 1] if hvps else math.nan  # nearest rank
        capped = [r.monitors[key].get("unconverged_estimates") for r, _ in pairs]
        known = None not in capped and hvps
        converged = 1 - sum(capped) / len(hvps) if known else math.nan  # type: ignore[arg-type]
        lines.append(
            f"| {family} | {len(pairs)} | {mean([r.seconds for r, _ in pairs]):.1f} | "
            f"{1000 * statistics.median(r.median_step for r, _ in pairs):.2f} | "
            f"{len(hvps) / len(pairs):.1f} | {1000 * len(hvps) / max(1, steps):.1f} | "
            f"{statistics.median(hvps) if hvps else math.nan:.0f}, {p90:.0f} | "
            f"{converged:.0%} | {statistics.median(shares) if shares else math.nan:.1%}, "
            f"{max(shares, default=math.nan):.1%} |"
        )
    return [*lines, ""]
