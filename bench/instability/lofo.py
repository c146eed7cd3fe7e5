"""Leave-one-family-out tuning and scoring of the predictor (bench/RESULTS.md).

Every stored run becomes a ``Case``: its records in the order the daemon saw them, its
label loss, its family. ``replay`` feeds a case through ``RunAnalysis``, the daemon's
own class, with any settings, so a grid of settings is tried without training again.

For each family F: the settings are chosen on every other family (the best Recall@5
within the false-alarm targets), then F is scored with them. The headline pools those
left-out scores over every F: no figure is reported on runs its settings were tuned on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from bench.instability.scoring import RunScore, Summary, score_run, summarize
from edgewatch.monitor.forecast import ALARM_STATES, DEFAULT_SETTINGS, Alert, PredictorSettings
from edgewatch.schemas import AnyRecord
from edgewatch.server.analysis import RunAnalysis, record_from_row
from edgewatch.server.store import Store

MAX_FALSE_PER_1000 = 0.5
MAX_EVENT_FREE_ALARMED = 0.10


@dataclasses.dataclass
class Case:
    """One monitored run as the daemon stored it, with the truth it is scored against."""

    family: str
    job: str
    label_loss: list[float]
    optimizer: dict[str, Any]
    total_steps: int
    run: int
    records: list[AnyRecord]
    loss: list[float]  # the stored training loss per step (NaN where none)
    grad: list[float]  # the stored gradient norm per step
    live: list[tuple[int, str]]  # the daemon's own alerts (step, state)


def load_case(store: Store, family: str, job: str, label_loss: list[float], steps: int) -> Case:
    row = next(j for j in store.jobs() if j["job_id"] == job)
    records = [
        record_from_row(job, table, r) for table, r in store.run_records(row["pk"], row["run"])
    ]
    n = len(label_loss)
    loss, grad = [math.nan] * n, [math.nan] * n
    for r in records:
        if r.__class__.__name__ == "Step" and r.step < n:  # type: ignore[attr-defined]
            loss[r.step] = math.nan if r.loss is None else r.loss  # type: ignore[attr-defined]
            grad[r.step] = math.nan if r.grad_norm is None else r.grad_norm  # type: ignore[attr-defined]
    live = [(a["step"], a["state"]) for a in store.alerts(row["pk"]) if a["run"] == row["run"]]
    return Case(
        family,
        job,
        label_loss,
        dict(row["optimizer"] or {}),
        steps,
        row["run"],
        records,
        loss,
        grad,
        live,
    )


def replay(case: Case, settings: PredictorSettings) -> list[Alert]:
    analysis = RunAnalysis(0, case.run, case.optimizer, settings, case.total_steps)
    analysis.feed(case.records)
    return analysis.forecast.alerts


def alarmed_steps(alerts: Iterable[tuple[int, str]], n: int) -> list[bool]:
    """Per step, whether the state in force is an alarm state."""
    out, state, pending = [], "stable", sorted(alerts)
    i = 0
    for t in range(n):
        while i < len(pending) and pending[i][0] <= t:
            state = pending[i][1]
            i += 1
        out.append(state in ALARM_STATES)
    return out


def score(case: Case, settings: PredictorSettings) -> tuple[RunScore, list[tuple[int, str]]]:
    alerts = [(a.step, a.state) for a in replay(case, settings)]
    n = len(case.label_loss)
    return score_run(case.label_loss, alarmed_steps(alerts, n)), alerts


def _score_all(args: tuple[list[Case], PredictorSettings]) -> list[RunScore]:
    cases, settings = args
    return [score(c, settings)[0] for c in cases]


class Scorer:
    """Per-case scores of any settings, each computed once (two worker processes: the
    machine's two cores) and kept: the folds of leave-one-family-out and the ablation
    visit many of the same points."""

    def __init__(self, cases: list[Case]) -> None:
        self.cases = cases
        self.cache: dict[PredictorSettings, list[RunScore]] = {}
        self.pool = ProcessPoolExecutor(max_workers=2)

    def many(self, points: list[PredictorSettings]) -> list[list[RunScore]]:
        todo = [p for p in dict.fromkeys(points) if p not in self.cache]
        half = len(self.cases) // 2
        parts = [(self.cases[:half], p) for p in todo] + [(self.cases[half:], p) for p in todo]
        done = list(self.pool.map(_score_all, parts))
        for k, p in enumerate(todo):
            self.cache[p] = done[k] + done[k + len(todo)]
        return [self.cache[p] for p in points]

    def close(self) -> None:
        self.pool.shutdown()


def feasible_key(summary: Summary) -> tuple[bool, float, float]:
    """Within the false-alarm targets first; then Recall@5, then the median lead."""
    ok = (
        summary.false_per_1000 <= MAX_FALSE_PER_1000
        and summary.event_free_alarmed <= MAX_EVENT_FREE_ALARMED
    )
    return (ok, summary.recall[5] if ok else -summary.false_per_1000, summary.median_lead)


def tune(
    scorer: Scorer,
    inside: list[int],
    grid: Mapping[str, Sequence[Any]],
    fixed: Mapping[str, Any] | None = None,
    rounds: int = 2,
) -> tuple[PredictorSettings, Summary]:
    """Coordinate search over ``grid`` on the cases ``inside``: each knob in turn set to
    its best value with the others held, ``rounds`` times; ``fixed`` knobs never move."""
    fixed = dict(fixed or {})
    current = dataclasses.replace(DEFAULT_SETTINGS, **fixed)
    for name, values in grid.items():  # start from each knob's first value
        if name not in fixed:
            current = dataclasses.replace(current, **{name: values[0]})

    def key(scores: list[RunScore]) -> tuple[bool, float, float]:
        return feasible_key(summarize([scores[i] for i in inside]))

    for _ in range(rounds):
        for name, values in grid.items():
            if name in fixed:
                continue
            points = [dataclasses.replace(current, **{name: v}) for v in values]
            scored_points = scorer.many(points)
            current = max(zip(points, scored_points, strict=True), key=lambda p: key(p[1]))[0]
    best = scorer.many([current])[0]
    return current, summarize([best[i] for i in inside])


@dataclasses.dataclass
class LeftOut:
    family: str
    settings: PredictorSettings
    tuned_on: Summary  # the chosen settings on the other families
    scores: list[RunScore]  # the left-out family's runs, scored with those settings


def leave_one_family_out(
    scorer: Scorer, grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any] | None = None
) -> list[LeftOut]:
    """For each family: settings tuned on the other families, scored on it."""
    cases = scorer.cases
    out = []
    for family in dict.fromkeys(c.family for c in cases):
        inside = [i for i, c in enumerate(cases) if c.family != family]
        held = [i for i, c in enumerate(cases) if c.family == family]
        settings, tuned_on = tune(scorer, inside, grid, fixed)
        scores = scorer.many([settings])[0]
        out.append(LeftOut(family, settings, tuned_on, [scores[i] for i in held]))
    return out
