"""The per-run forecast the daemon keeps, fed the same way live and in replay.

Live, the ingest thread feeds each accepted record, in the client's sequence order, to
the run's :class:`RunAnalysis`; the alerts it raises go into the same transaction as the
records that raised them. ``replay`` feeds the stored records of a run (or an exported
trace) through the same class, so it raises the same alerts. On start the daemon rebuilds
the analysis of every running job this way; the alerts it finds again are already stored
and their inserts are no-ops (alerts are keyed by their number within the run).
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from edgewatch.monitor.forecast import DEFAULT_SETTINGS, Alert, JobForecast, PredictorSettings
from edgewatch.monitor.plan import LRPlan
from edgewatch.schemas import CRITICAL_METHOD, AnyRecord, Event, Plan, Sharpness, Step
from edgewatch.schemas.views import finite  # +Inf (no crossing forecast) is stored as NULL
from edgewatch.server.store import Store

log = logging.getLogger(__name__)

# The forecast's block path (``monitor/window.py``) imports scipy.signal: about 1.5 s, more
# than half of a daemon's start (bench/RESULTS.md, "Restart time"). A daemon defers it
# (``defer_block_path``) and loads it on a thread once it serves (``load_block_path``);
# until then steps go through the forecast one at a time, which raises the same alerts to
# the bit (tests/test_forecast_batch.py), only slower (about 7 µs a step against 2): past
# SCALAR_STEPS of them (a rebuild with a long tail after its checkpoint), loading it now
# costs less than going on, and the caller waits for it. Every other caller (the replays,
# the benchmarks) loads it at its first block.
SCALAR_STEPS = 200_000
_BLOCK_PATH = "edgewatch.monitor.window"
_block_path_loaded = threading.Event()
_block_path_deferred = False
_scalar_steps = 0


def defer_block_path() -> None:
    """Feed steps one at a time until ``load_block_path`` has loaded the block path."""
    global _block_path_deferred
    _block_path_deferred = True


def load_block_path(background: bool = True) -> None:
    """Import the block path, on a thread of its own unless ``background`` is False."""

    def load() -> None:
        try:
            importlib.import_module(_BLOCK_PATH)
        except Exception:  # the scalar path still gives every alert
            log.exception("the forecast's block path failed to load: steps go one at a time")
            return
        _block_path_loaded.set()

    if _block_path_loaded.is_set():
        return
    if background:
        threading.Thread(target=load, name="edgewatch-block-path", daemon=True).start()
    else:
        load()


def _block_path_ready(steps: int) -> bool:
    """Whether the next ``steps`` steps go through the block path (loading it if due)."""
    global _scalar_steps
    if _block_path_loaded.is_set():
        return True
    _scalar_steps += steps
    if not _block_path_deferred or _scalar_steps > SCALAR_STEPS:
        load_block_path(background=False)  # waits for a thread already loading it
    return _block_path_loaded.is_set()


class RunAnalysis:
    """One run of one job: its forecast, and its alerts as rows for the alerts table."""

    def __init__(
        self,
        job_pk: int,
        run: int,
        optimizer: Mapping[str, Any],
        settings: PredictorSettings = DEFAULT_SETTINGS,
        total_steps: int | None = None,
    ) -> None:
        self.job_pk, self.run = job_pk, run
        self.forecast = JobForecast(optimizer, settings, total_steps)
        self.last_seq = 0  # records at or below it were fed already (resends)
        self.live = True  # False while replaying stored records: their own times count
        self.changed_at: dict[str, float] = {}  # latest change into each state (daemon clock)
        self.last_sharpness: Sharpness | None = None  # the newest estimate, used or not

    def feed(self, records: Iterable[AnyRecord]) -> list[tuple[Alert, float]]:
        """Records in sequence order, as they came off the wire or back from the database:
        the one loop every caller feeds (ingest, the rebuild after a restart, both
        replays). Consecutive steps go to the forecast as one block (``monitor/window.py``);
        records at or below ``last_seq`` were fed already (resends). Returns the alerts
        raised, each with the wall time of the record that raised it."""
        raised: list[tuple[Alert, float]] = []
        block: list[Step] = []
        for record in records:
            if record.seq <= self.last_seq:
                continue
            self.last_seq = record.seq
            if type(record) is Step:  # nearly every record: one type test
                block.append(record)
                continue
            if block:  # the steps before this record, first
                self._steps(block, raised)
                block = []
            alert = self._other(record)
            if alert is not None:
                raised.append((alert, record.wall_time))
        if block:
            self._steps(block, raised)
        return raised

    def _steps(self, block: list[Step], raised: list[tuple[Alert, float]]) -> None:
        if _block_path_ready(len(block)):
            alerts = self.forecast.observe_steps(block)
        else:
            observe = self.forecast.observe_step
            alerts = []
            for r in block:
                alert = observe(r.step, r.lr, r.loss, r.grad_norm, r.update_norm, r.moment_ratio)
                if alert is not None:
                    alerts.append(alert)
        if alerts:
            wall = {r.step: r.wall_time for r in block}
            raised.extend((a, wall.get(a.step, block[-1].wall_time)) for a in alerts)

    def _other(self, record: AnyRecord) -> Alert | None:
        match record:
            case Sharpness():
                if record.method == CRITICAL_METHOD:
                    return self.forecast.observe_critical(record.step, record.value, record.lr)
                self.last_sharpness = record
                return self.forecast.observe_sharpness(
                    record.step, record.value, record.lr, record.update_curvature
                )
            case Plan():
                plan = LRPlan(tuple(record.steps), tuple(record.lrs))
                return self.forecast.observe_plan(record.step, plan)
            case Event():
                return self.forecast.observe_event(record.step, record.kind)
        return None

    def steps(self, records: list[Step]) -> list[tuple[Alert, float]]:
        """Step records in sequence order (``feed``; kept for the intake's call sites)."""
        return self.feed(records)

    def record(self, record: AnyRecord) -> Alert | None:
        """Any record but a step (``feed``; kept for the intake's call sites)."""
        raised = self.feed((record,))
        return raised[0][0] if raised else None

    def alert_row(self, alert: Alert, wall_time: float) -> tuple[Any, ...]:
        """The alerts-table tuple (INSERT_COLUMNS order); seq is the alert's number in the
        run (a block of steps may raise several: each keeps its own). Also notes when the
        state changed, for ``edgewatch_state_changed_timestamp_seconds``."""
        self.changed_at[alert.state] = time.time() if self.live else wall_time
        alerts = self.forecast.alerts
        number = len(alerts) - next(i for i, a in enumerate(reversed(alerts)) if a is alert)
        return (
            self.job_pk,
            self.run,
            number,
            alert.step,
            wall_time,
            alert.state,
            finite(alert.steps_to_instability),
            finite(alert.steps_low),
            finite(alert.steps_high),
            alert.ratio,
            alert.recommended_lr,
            alert.recommended_warmup_steps,
            alert.reason,
            alert.resume_step,
        )

    def feed_rows(self, rows: Iterable[tuple[str, Mapping[str, Any]]]) -> list[tuple[Any, ...]]:
        """Feed stored records (``Store.run_records``); returns the alert rows raised."""
        # SQLite keeps a NaN as NULL; the nonfinite_loss event after it says so.
        records = (record_from_row("", table, row) for table, row in rows)
        return [self.alert_row(alert, wall) for alert, wall in self.feed(records)]


def record_from_row(job_id: str, table: str, row: Mapping[str, Any]) -> AnyRecord:
    """A stored row (``Store.run_records``) as the wire record it came from: its table's
    columns are the record's fields (``tables.record_columns``)."""
    return msgspec.convert(dict(row, job=job_id), _RECORD_TYPES[table])


_RECORD_TYPES: dict[str, type[AnyRecord]] = {
    "steps": Step,
    "sharpness": Sharpness,
    "events": Event,
    "plans": Plan,
}


def rebuild(
    store: Store,
    job_pk: int,
    run: int,
    optimizer: Mapping[str, Any],
    settings: PredictorSettings = DEFAULT_SETTINGS,
    total_steps: int | None = None,
    resume: RunAnalysis | None = None,
) -> RunAnalysis:
    """A run's analysis from its stored records (a start, a takeover): from ``resume`` (a
    checkpoint, ``checkpoint.py``) on with the records after it, else from the first
    record. Stores any alert missing."""
    analysis = resume or RunAnalysis(job_pk, run, optimizer, settings, total_steps)
    analysis.live = False
    raised = analysis.feed_rows(store.run_records(job_pk, run, after=analysis.last_seq))
    analysis.live = True
    store.add_alerts(raised)
    return analysis
