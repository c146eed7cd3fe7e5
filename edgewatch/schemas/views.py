"""The HTTP API's JSON answers, declared once: the daemon encodes them
(``server/routes.py``), the command line, the plots and the demo decode them
(``api_client.py``), DESIGN.md and the README describe them.

JSON has no infinity: a forecast of no crossing (``math.inf`` in the daemon) is null,
and so is NaN (msgspec encodes both as null). ``finite`` does it where a value is
copied in, so that a decoded view equals the one encoded.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec


def finite(value: float | None) -> float | None:
    """``value``, or None where JSON cannot carry it (infinite, NaN)."""
    return value if value is not None and math.isfinite(value) else None


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /healthz``: 200 while the database answers, else 503 ("degraded")."""

    status: str
    database: bool
    jobs: int
    uptime_seconds: float


class Analysis(msgspec.Struct, frozen=True, kw_only=True):
    """A job's forecast as of its newest committed record."""

    state: str
    steps_to_instability: float | None
    """Steps to the forecast crossing; null when none is forecast within the plan."""
    recommended_lr: float | None
    recommended_warmup_steps: int
    resume_step: int | None
    """A diverged job: resume from a checkpoint at or before this step."""
    alarm_ratio: float | None
    sustained_level: float | None
    planned_lr: bool
    """Whether the forecast read the LR plan the client sent (else the LR in force)."""
    reason: str


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/jobs`` (a list of these) and ``GET /api/jobs/{job_id}``; the latter
    adds what the current run's curvature budget bought (``estimates``,
    ``curvature_seconds``), None in the list."""

    job_id: str
    status: str
    run: int
    last_step: int | None
    records: int
    dropped: int
    last_seen: float
    started_at: float
    ended_at: float | None
    host: str
    world_size: int
    total_steps: int | None
    budget: float | None
    settle_steps: int | None
    preflight: dict[str, Any] | None
    optimizer: dict[str, Any]
    lr: float | None
    loss: float | None
    grad_norm: float | None
    sharpness: float | None
    sharpness_step: int | None
    preconditioned: bool
    stability_threshold: float | None
    stability_ratio: float | None
    analysis: Analysis
    estimates: int | None = None
    """λ_max estimates of the current run (a critical sharpness is not one)."""
    curvature_seconds: float | None = None
    """Seconds the client spent on them."""


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """One forecast state change (``GET /api/jobs/{job_id}/alerts``, ``edgewatch replay
    --json``, which leaves ``run`` and ``wall_time`` null)."""

    step: int
    state: str
    steps_to_instability: float | None
    """Null: no crossing forecast."""
    steps_low: float | None
    steps_high: float | None
    stability_ratio: float | None
    """The forecast stability ratio at the crossing (or the riskiest step of the horizon)."""
    recommended_lr: float | None
    recommended_warmup_steps: int | None
    reason: str
    resume_step: int | None = None
    run: int | None = None
    wall_time: float | None = None


class Error(msgspec.Struct, frozen=True):
    """Any 4xx or 5xx answer: what went wrong, and where it can, what to do."""

    error: str
