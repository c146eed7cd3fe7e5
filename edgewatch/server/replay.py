"""Offline analysis: run the forecast over a stored job, or over an exported trace.

For post-mortems (what did edgewatch say, and when?) and for trying other predictor
settings on old jobs. The records go through :class:`RunAnalysis`, the class the daemon
feeds live, in the same sequence order, so the same settings give the same alerts.

A trace is JSON lines of wire records (``edgewatch schema`` describes them): the run's
``job_start`` first, then its records in sequence order. ``export_trace`` writes one
from the database; anything that speaks the wire protocol can write one too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec

from edgewatch.errors import ConfigError
from edgewatch.monitor.forecast import DEFAULT_SETTINGS, Alert, PredictorSettings
from edgewatch.schemas import AnyRecord, JobStart, OptimizerInfo
from edgewatch.server.analysis import RunAnalysis, record_from_row
from edgewatch.server.store import Store

T = TypeVar("T")


@dataclasses.dataclass
class Replayed:
    job_id: str
    run: int
    records: int
    alerts: list[Alert]
    live: list[dict[str, Any]] | None = None
    """The alerts the daemon stored for this run (None for a trace)."""

    @property
    def matches_live(self) -> bool | None:
        if self.live is None:
            return None
        return [(a["step"], a["state"]) for a in self.live] == [
            (a.step, a.state) for a in self.alerts
        ]


def _job_row(store: Store, job_id: str) -> dict[str, Any]:
    for row in store.jobs():
        if row["job_id"] == job_id:
            return row
    known = ", ".join(repr(r["job_id"]) for r in store.jobs()[:10]) or "none"
    raise ConfigError(f"no job {job_id!r} in {store.engine.url!r} (jobs there: {known})")


def replay_stored(
    store: Store, job_id: str, settings: PredictorSettings = DEFAULT_SETTINGS
) -> Replayed:
    """The job's latest run, from the database."""
    job = _job_row(store, job_id)
    analysis = RunAnalysis(
        job["pk"], job["run"], job["optimizer"] or {}, settings, job["total_steps"]
    )
    counted = _Counted(store.run_records(job["pk"], job["run"]))
    analysis.feed_rows(counted)
    records = counted.n
    live = [a for a in store.alerts(job["pk"]) if a["run"] == job["run"]]
    return Replayed(job_id, job["run"], records, analysis.forecast.alerts, live)


def replay_trace(path: Path, settings: PredictorSettings = DEFAULT_SETTINGS) -> Replayed:
    records = iter(read_trace(path))
    start = next(records, None)
    if not isinstance(start, JobStart):
        raise ConfigError(f"{path}: a trace starts with the run's job_start record")
    optimizer = msgspec.to_builtins(start.optimizer)
    analysis = RunAnalysis(0, start.run, optimizer, settings, start.total_steps)
    counted = _Counted(records)
    analysis.feed(counted)
    return Replayed(start.job, start.run, 1 + counted.n, analysis.forecast.alerts)


class _Counted(Generic[T]):
    """An iterable that counts what went through it (the records replayed)."""

    def __init__(self, items: Iterable[T]) -> None:
        self.items, self.n = items, 0

    def __iter__(self) -> Iterator[T]:
        for item in self.items:
            self.n += 1
            yield item


def read_trace(path: Path) -> Iterator[AnyRecord]:
    decoder = msgspec.json.Decoder(AnyRecord)
    try:
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield decoder.decode(line)
                    except msgspec.DecodeError as exc:
                        raise ConfigError(f"{path}:{number}: not a wire record: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read trace {path}: {exc.strerror}") from exc


def export_trace(store: Store, job_id: str, path: Path) -> int:
    """Write the job's latest run as a trace; returns the number of records."""
    job = _job_row(store, job_id)
    run = job["run"]
    encoder = msgspec.json.Encoder()
    fields = set(OptimizerInfo.__struct_fields__)
    optimizer = OptimizerInfo(**{k: v for k, v in (job["optimizer"] or {}).items() if k in fields})
    start = JobStart(
        job=job_id,
        run=run,
        seq=0,
        wall_time=job["started_at"],
        optimizer=optimizer,
        world_size=job["world_size"],
        host=job["host"],
        total_steps=job["total_steps"],
        budget=job["budget"],
    )
    count = 1
    with path.open("wb") as f:
        f.write(encoder.encode(start) + b"\n")
        for table, row in store.run_records(job["pk"], run):
            f.write(encoder.encode(record_from_row(job_id, table, row)) + b"\n")
            count += 1
    return count
