"""Per-job state the daemon keeps in memory: what ``/metrics`` and ``/api/jobs`` show.

The ingest thread writes it after each commit; HTTP threads read snapshots. On start
the daemon rebuilds it from the jobs table, so a restart shows every job at once.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import Counter
from typing import Any, NamedTuple, Protocol

from edgewatch.monitor.forecast import JobForecast
from edgewatch.monitor.settings import PredictorSettings
from edgewatch.monitor.thresholds import threshold_for, uses_preconditioned_sharpness
from edgewatch.schemas import views


class StepReading(Protocol):
    """The newest step's readings, as ``schemas.Step`` has them (read-only)."""

    @property
    def step(self) -> int | None: ...
    @property
    def lr(self) -> float: ...
    @property
    def loss(self) -> float | None: ...
    @property
    def grad_norm(self) -> float | None: ...


class SharpnessReading(Protocol):
    """The newest λ_max estimate, as ``schemas.Sharpness`` has it (read-only)."""

    @property
    def step(self) -> int: ...
    @property
    def value(self) -> float: ...
    @property
    def preconditioned(self) -> bool: ...


class Reading(NamedTuple):
    """A step's readings from a stored row or from the forecast (None: not known)."""

    step: int | None
    lr: float
    loss: float | None
    grad_norm: float | None


class Estimate(NamedTuple):
    step: int
    value: float
    preconditioned: bool


@dataclasses.dataclass
class JobState:
    """What the daemon knows of one job now: its row's fields, the newest readings and
    the forecast, written by the ingest thread after each commit (``apply``) and read
    by ``/metrics`` and the API through ``JobTable`` snapshots."""

    pk: int
    job_id: str
    run: int
    status: str
    optimizer: dict[str, Any]
    started_at: float
    last_seen: float
    """Wall time (client clock) of the newest committed record."""
    received_at: float
    """Daemon clock when the newest record arrived; drives expiry from /metrics."""
    world_size: int = 1
    host: str = ""
    pid: int | None = None
    total_steps: int | None = None
    budget: float | None = None
    """Share of the training's wall time the client may spend on curvature (JobStart)."""
    preflight: dict[str, Any] | None = None
    """The run's pre-flight report, as the client sent it."""
    settle_steps: int | None = None
    """Adam-type optimizers: steps before which estimates are left out of the forecast
    (the forecast's setting; the default for a finished job restored after a restart);
    None for the others."""
    ended_at: float | None = None
    records: int = 0
    dropped: int = 0
    last_step: int | None = None
    lr: float | None = None
    loss: float | None = None
    grad_norm: float | None = None
    sharpness: float | None = None
    sharpness_step: int | None = None
    preconditioned: bool = False
    # The forecast (monitor/forecast.py), copied from the run's analysis after each commit.
    state: str = "stable"
    steps_to_instability: float = math.inf
    recommended_lr: float | None = None
    recommended_warmup_steps: int = 0
    resume_step: int | None = None
    """A diverged job: the checkpoint to go back to is at or before this step."""
    alarm_ratio: float | None = 1.0
    """None for a finished job restored after a restart: only a replay would know it."""
    sustained_level: float | None = None
    forecast_reason: str = "no sharpness yet"
    planned_lr: bool = False
    state_changed_at: dict[str, float] = dataclasses.field(default_factory=dict)
    """When the forecast last changed into each state (daemon clock): a state shorter
    than a scrape still shows (edgewatch_state_changed_timestamp_seconds)."""
    alert_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    """State changes into each state so far in this run: a short state between two scrapes
    still shows as an increase (edgewatch_alerts_total)."""
    owned: bool = False
    """Whether this daemon holds the job's lease (``leases.py``): only the holder analyses
    the job and exports its series, so that daemons sharing a database never both do."""

    @classmethod
    def from_row(cls, row: dict[str, Any], now: float) -> JobState:
        return cls(
            pk=row["pk"],
            job_id=row["job_id"],
            run=row["run"],
            status=row["status"],
            optimizer=dict(row["optimizer"] or {}),
            started_at=row["started_at"],
            last_seen=row["last_seen"],
            received_at=now,
            world_size=row["world_size"],
            host=row["host"],
            pid=row.get("pid"),
            total_steps=row["total_steps"],
            budget=row.get("budget"),
            preflight=row.get("preflight"),
            settle_steps=PredictorSettings().settle_steps
            if uses_preconditioned_sharpness(str((row["optimizer"] or {}).get("kind", "")))
            else None,
            ended_at=row["ended_at"],
            records=row["records"],
            dropped=row["dropped"],
            last_step=row["last_step"],
            loss=row["last_loss"],
        )

    @property
    def threshold(self) -> float | None:
        """Stability threshold at the LR in force (None before the first step)."""
        if self.lr is None:
            return None
        return threshold_for(self.optimizer, self.lr)

    @property
    def stability_ratio(self) -> float | None:
        threshold = self.threshold
        if self.sharpness is None or threshold is None or not math.isfinite(threshold):
            return None
        return self.sharpness / threshold

    @property
    def ack_ratio(self) -> float | None:
        """What the Acks tell the client: the ratio, raised to 1 while the forecast is in an
        alarm state, so that the client measures curvature more often before a crossing."""
        ratio = self.stability_ratio
        if self.state != "stable":
            return max(ratio or 0.0, 1.0)
        return ratio

    def view(self) -> views.Job:
        """The job as ``GET /api/jobs`` shows it."""
        return views.Job(
            job_id=self.job_id,
            status=self.status,
            run=self.run,
            last_step=self.last_step,
            records=self.records,
            dropped=self.dropped,
            last_seen=self.last_seen,
            started_at=self.started_at,
            ended_at=self.ended_at,
            host=self.host,
            world_size=self.world_size,
            total_steps=self.total_steps,
            budget=self.budget,
            settle_steps=self.settle_steps,
            preflight=self.preflight,
            optimizer=self.optimizer,
            lr=self.lr,
            loss=self.loss,
            grad_norm=self.grad_norm,
            sharpness=self.sharpness,
            sharpness_step=self.sharpness_step,
            preconditioned=self.preconditioned,
            stability_threshold=self.threshold,
            stability_ratio=self.stability_ratio,
            analysis=views.Analysis(
                state=self.state,
                steps_to_instability=views.finite(self.steps_to_instability),
                recommended_lr=self.recommended_lr,
                recommended_warmup_steps=self.recommended_warmup_steps,
                resume_step=self.resume_step,
                alarm_ratio=self.alarm_ratio,
                sustained_level=self.sustained_level,
                planned_lr=self.planned_lr,
                reason=self.forecast_reason,
            ),
        )

    def restore(
        self,
        step: dict[str, Any] | None,
        sharpness: dict[str, Any] | None,
        alert: dict[str, Any] | None,
        planned: bool,
    ) -> None:
        """A finished job as it ended, from its stored rows (no replay): the last step's
        readings, the last estimate, whether it sent an LR plan, and the analysis as its
        last alert left it. What only a replay would know (the alarm ratio, the sustained
        level) is shown as unknown."""
        self.planned_lr = planned
        self.apply(
            # The jobs row keeps the last step and loss; the step row adds its LR and norm.
            None
            if step is None
            else Reading(self.last_step, step["lr"], self.loss, step["grad_norm"]),
            None
            if sharpness is None
            else Estimate(sharpness["step"], sharpness["value"], sharpness["preconditioned"]),
        )
        self.alarm_ratio = None
        self.sustained_level = None
        if alert is None:
            self.forecast_reason = "finished without an alert"
            return
        self.state = alert["state"]
        self.steps_to_instability = (
            math.inf if alert["steps_to_instability"] is None else alert["steps_to_instability"]
        )
        self.recommended_lr = alert["recommended_lr"]
        self.recommended_warmup_steps = alert["recommended_warmup_steps"]
        self.resume_step = alert.get("resume_step")
        self.forecast_reason = alert["reason"]

    def apply(
        self,
        step: StepReading | None = None,
        sharpness: SharpnessReading | None = None,
        forecast: JobForecast | None = None,
        changed_at: dict[str, float] | None = None,
    ) -> None:
        """The one writer of a job's readings: the newest step's (its step, LR, loss and
        gradient norm), the newest λ_max estimate's, and what the run's forecast says now.
        Ingest calls it after each commit, the daemon after rebuilding a running job's
        forecast, ``restore`` for a finished one; None leaves a part as it is."""
        if step is not None:
            self.last_step, self.lr = step.step, step.lr
            self.loss, self.grad_norm = step.loss, step.grad_norm
        if sharpness is not None:
            self.sharpness, self.sharpness_step = sharpness.value, sharpness.step
            self.preconditioned = sharpness.preconditioned
        if forecast is not None:
            self.follow(forecast, changed_at)

    def follow(self, forecast: JobForecast, changed_at: dict[str, float] | None = None) -> None:
        """Copy what the run's forecast says now (``apply``)."""
        if changed_at is not None:
            self.state_changed_at = dict(changed_at)
        self.state = forecast.state
        self.steps_to_instability = forecast.steps_to_instability
        self.recommended_lr = forecast.recommended_lr
        self.recommended_warmup_steps = forecast.recommended_warmup_steps
        self.resume_step = forecast.resume_step
        self.alarm_ratio = forecast.alarm_ratio
        self.sustained_level = forecast.sustained_level
        self.forecast_reason = forecast.reason
        self.planned_lr = forecast.plan is not None
        self.settle_steps = forecast.settings.settle_steps if forecast.adam else None
        self.alert_counts = dict(Counter(alert.state for alert in forecast.alerts))


class JobTable:
    """The daemon's jobs by id, safe to read from HTTP threads while ingest writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, JobState] = {}

    def load(self, rows: list[dict[str, Any]]) -> None:
        now = time.time()
        with self._lock:
            for row in rows:
                self._jobs[row["job_id"]] = JobState.from_row(row, now)

    def get(self, job_id: str) -> JobState | None:
        with self._lock:
            return self._jobs.get(job_id)

    def get_pk(self, pk: int) -> JobState | None:
        """A copy of the job with this primary key, to change and ``put`` back."""
        with self._lock:
            found = next((s for s in self._jobs.values() if s.pk == pk), None)
            return None if found is None else dataclasses.replace(found)

    def put(self, state: JobState) -> None:
        with self._lock:
            self._jobs[state.job_id] = state

    def snapshot(self) -> list[JobState]:
        """Copies, so that a reader never sees a half-applied commit."""
        with self._lock:
            return [dataclasses.replace(s) for s in self._jobs.values()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)
