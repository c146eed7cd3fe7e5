"""The tables of the instability benchmark's report (bench/predict.py)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from harness import RunResult
from lofo import Case, LeftOut, Scorer, leave_one_family_out, replay
from scoring import BASELINES, HEADER, INIT, RunScore, excursions, score_run, scored, summarize

from edgewatch.monitor.forecast import ALARM_STATES, PredictorSettings
from edgewatch.monitor.thresholds import threshold_for
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
    """edgewatch (left-out scores) beside every baseline, per family and pooled."""
    lines = [f"#### Left-out families, {title}", ""]
    pooled: list[RunScore] = []
    baselines: dict[str, list[RunScore]] = {}
    for held in left_out:
        family_cases = [c for c in cases if c.family == held.family]
        pooled += held.scores
        lines += [
            f"Family **{held.family}** (settings tuned on the others: {brief(held.settings)}):",
            "",
        ]
        lines += [HEADER, summarize(held.scores).row("**edgewatch**")]
        for name, per_case in _baseline_scores(family_cases).items():
            baselines.setdefault(name, []).extend(per_case)
            lines.append(summarize(per_case).row(name))
        lines.append("")
    ew = summarize(pooled)
    lines += ["Pooled over the left-out families:", "", HEADER, ew.row("**edgewatch** (left out)")]
    for name, per_case in baselines.items():
        lines.append(summarize(per_case).row(name))
    later = summarize(pooled, after=INIT)
    lines += [
        "",
        f"Events with their onset after step {INIT} (no lead of 5 is possible before): "
        f"edgewatch Recall@1 {later.recall[1]:.2f}, Recall@5 {later.recall[5]:.2f}, "
        f"median lead {later.median_lead:.0f}, over {later.events} of the {ew.events} events.",
    ]
    lines += _equal_false_alarms(cases, ew.false_per_1000)
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


def _baseline_scores(cases: list[Case]) -> dict[str, list[RunScore]]:
    out: dict[str, list[RunScore]] = {}
    for case in cases:
        for name, signal in baseline_signals(case).items():
            alarmed = [v >= THRESHOLDS[name] for v in signal]
            out.setdefault(name, []).append(score_run(case.label_loss, alarmed))
    return out


def _equal_false_alarms(cases: list[Case], target: float) -> list[str]:
    """Each baseline at the threshold giving it edgewatch's pooled false-alarm rate (chosen
    on the very runs scored, which favours the baselines)."""
    from scoring import threshold_for_false_rate

    lines = ["", f"At edgewatch's false-alarm rate ({target:.2f} / 1000 steps):", "", HEADER]
    signals = [baseline_signals(c) for c in cases]
    for name in THRESHOLDS:
        runs = [(c.label_loss, s[name]) for c, s in zip(cases, signals, strict=True)]
        theta = threshold_for_false_rate(runs, target)
        scores = [score_run(loss, [v >= theta for v in s]) for loss, s in runs]
        lines.append(summarize(scores).row(f"{name}, θ = {theta:.3g}"))
    return lines


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


def spending(results: list[RunResult], key: str) -> list[str]:
    """The share of each run's training time its monitor spent on curvature, and the
    estimates it made (what "budget" bought on runs this short)."""
    shares = [r.curvature_seconds[key] / r.seconds for r in results if r.seconds > 0]
    steps = sum(len(r.label_loss) for r in results)
    return [
        f"Budget {key}: curvature took a median {statistics.median(shares):.1%} of a run's "
        f"training time (max {max(shares):.1%}; the first, cold estimate is charged too, "
        f"and on runs of a few hundred steps it weighs more than the budget), over {steps} "
        "steps in all.",
        "",
    ]
