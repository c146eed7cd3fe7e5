"""Leave-one-family-out tuning and scoring of the predictor (issue 11).

Every stored run becomes a ``Case``: its records in the order the daemon saw them, its
label loss, its family. ``replay`` feeds a case through ``RunAnalysis``, the daemon's
own class, with any settings, so a grid of settings is tried without training again.

For each family F: the settings are chosen on every other family (the best Recall@5
within the false-alarm targets), then F is scored with them. The headline pools those
left-out scores over every F: no figure is reported on runs its settings were tuned on.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from scoring import RunScore, Summary, score_run, summarize

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
    records = [record_from_row(job, table, r) for table, r in store.run_records(row["pk"], row["run"])]
    n = len(label_loss)
    loss, grad = [math.nan] * n, [math.nan] * n
    for r in records:
        if r.__class__.__name__ == "Step" and r.step < n:  # type: ignore[attr-defined]
            loss[r.step] = math.nan if r.loss is None else r.loss  # type: ignore[attr-defined]
            grad[r.step] = math.nan if r.grad_norm is None else r.grad_norm  # type: ignore[attr-defined]
    live = [(a["step"], a["state"]) for a in store.alerts(row["pk"]) if a["run"] == row["run"]]
    return Case(family, job, label_loss, dict(row["optimizer"] or {}), steps, row["run"],
                records, loss, grad, live)  # fmt: skip


def replay(case: Case, settings: PredictorSettings) -> list[Alert]:
    analysis = RunAnalysis(0, case.run, case.optimizer, settings, case.total_steps)
    for record in case.records:
        analysis.feed(record)
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


def grid_settings(grid: Mapping[str, Sequence[Any]]) -> list[PredictorSettings]:
    return [
        dataclasses.replace(DEFAULT_SETTINGS, **dict(zip(grid, values, strict=True)))
        for values in itertools.product(*grid.values())
    ]


def _score_all(args: tuple[list[Case], PredictorSettings]) -> list[RunScore]:
    cases, settings = args
    return [score(c, settings)[0] for c in cases]


def score_grid(cases: list[Case], grid: list[PredictorSettings]) -> list[list[RunScore]]:
    """scores[g][i]: grid point g on case i (two worker processes: the machine's cores)."""
    with ProcessPoolExecutor(max_workers=2) as pool:
        return list(pool.map(_score_all, [(cases, s) for s in grid], chunksize=4))


def feasible_key(summary: Summary) -> tuple[bool, float, float]:
    ok = (
        summary.false_per_1000 <= MAX_FALSE_PER_1000
        and summary.event_free_alarmed <= MAX_EVENT_FREE_ALARMED
    )
    return (ok, summary.recall[5] if ok else -summary.false_per_1000, summary.median_lead)


def choose(scores: list[list[RunScore]], chosen_cases: list[int]) -> int:
    """The grid point with the best key on the given cases."""
    best = max(
        range(len(scores)),
        key=lambda g: feasible_key(summarize([scores[g][i] for i in chosen_cases])),
    )
    return best


@dataclasses.dataclass
class LeftOut:
    family: str
    settings: PredictorSettings
    tuned_on: Summary  # the chosen point on the other families
    scores: list[RunScore]  # the left-out family's runs, scored with those settings


def leave_one_family_out(
    cases: list[Case], grid: list[PredictorSettings], scores: list[list[RunScore]]
) -> list[LeftOut]:
    out = []
    for family in dict.fromkeys(c.family for c in cases):
        inside = [i for i, c in enumerate(cases) if c.family != family]
        held = [i for i, c in enumerate(cases) if c.family == family]
        g = choose(scores, inside)
        out.append(
            LeftOut(family, grid[g], summarize([scores[g][i] for i in inside]),
                    [scores[g][i] for i in held])  # fmt: skip
        )
    return out
