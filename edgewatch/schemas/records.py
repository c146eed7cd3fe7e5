"""Wire records: what a training client tells the daemon, and what the daemon answers.

Every record carries ``protocol`` (the version it was written under), the ``job`` id,
the client's ``run`` id (random per ``attach``: a job resumed from a checkpoint is a new
run of the same job) and a per-run sequence number ``seq``. The daemon stores each
(job, run, seq) once, so a client may resend anything it has no acknowledgement for.

A frame on the socket is one msgpack-encoded :class:`Batch`; the daemon answers each
frame it could read with an :class:`Ack` (after the commit) or a :class:`Nack`.

Schema evolution (msgspec ``docs/schema-evolution.rst``), binding on every change here:

- a new field gets a default, so that older clients' frames still decode;
- a field never changes its type and is never removed while a protocol that sent it
  is still accepted;
- a new record type, or a change that older daemons would misread, bumps
  ``PROTOCOL_VERSION``; the daemon rejects versions outside ``SUPPORTED_PROTOCOLS``
  with the counted reason ``protocol_version``.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import msgspec

from edgewatch.schemas.reject import Reject

PROTOCOL_VERSION = 2
"""2 added the ``lr_plan`` record; a version-1 client's frames are still accepted."""
SUPPORTED_PROTOCOLS = frozenset({1, 2})


class Record(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields shared by every record type."""

    protocol: int = PROTOCOL_VERSION
    job: str
    run: int
    seq: int


class OptimizerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The optimizer as the client found it; the daemon derives thresholds from it."""

    kind: str
    """Class name, e.g. ``"AdamW"``, ``"SGD"``."""
    lr: float
    momentum: float | None = None
    nesterov: bool = False
    betas: tuple[float, float] | None = None
    eps: float | None = None
    weight_decay: float = 0.0
    param_groups: int = 1
    params: int = 0
    """Number of trainable scalars the optimizer updates."""


class JobStart(Record, frozen=True, kw_only=True, tag="job_start"):
    """Sent once per run, first; the daemon refuses other records of an unknown job."""

    wall_time: float
    optimizer: OptimizerInfo
    rank: int = 0
    world_size: int = 1
    host: str = ""
    pid: int = 0
    client_version: str = ""
    torch_version: str = ""
    total_steps: int | None = None
    budget: float = 0.02
    """Share of training wall time the client may spend on curvature."""
    preflight: dict[str, Any] | None = None
    """The job's pre-flight report (``PreflightReport.to_record()``), when it had one."""


class Step(Record, frozen=True, kw_only=True, tag="step"):
    """One optimizer step. ``loss`` and ``grad_norm`` may be NaN/Inf: that is divergence."""

    step: int
    wall_time: float
    lr: float
    """LR of the first parameter group, in force for this step."""
    group_lrs: list[float] | None = None
    """Every group's LR, sent only when the groups differ."""
    loss: float | None = None
    grad_norm: float | None = None
    update_norm: float | None = None
    """‖Δθ‖ of the step, without weight decay (``client/signals.py``)."""
    loss_scale: float | None = None
    tokens: int | None = None
    moment_ratio: float | None = None
    """Adam-type optimizers: the largest per-tensor RMS of g/√v̂ after the step."""


CRITICAL_METHOD = "critical"
"""The ``method`` of a Sharpness record that holds a critical sharpness λ_c = 2/η_c."""


class Sharpness(Record, frozen=True, kw_only=True, tag="sharpness"):
    """One estimate of the top Hessian eigenvalue (preconditioned for Adam-type optimizers),
    ``method`` "lanczos"; or, ``method`` "critical", the critical sharpness λ_c = 2/η_c
    along the last update (forward passes only; judged against 2/η)."""

    step: int
    wall_time: float
    value: float
    preconditioned: bool = False
    method: str = "lanczos"
    matvecs: int = 0
    residual: float | None = None
    probe_batch: int | None = None
    seconds: float = 0.0
    lr: float | None = None
    """LR in force at ``step`` (first group): the threshold this estimate is judged against."""
    update_curvature: float | None = None
    """Curvature along the optimizer's last update u: uᵀHu/(uᵀPu) for Adam-type optimizers
    (P = √v̂ + ε), uᵀHu/‖u‖² otherwise; judged against the same threshold as ``value``."""
    eta_max: float | None = None
    """2·gᵀu/(uᵀHu): the step along u beyond which the local quadratic model rises."""


class Event(Record, frozen=True, kw_only=True, tag="event"):
    """Something that happened at a step: ``nonfinite_loss``, ``skipped_step``, ..."""

    step: int
    wall_time: float
    kind: str
    detail: str = ""


class JobEnd(Record, frozen=True, kw_only=True, tag="job_end"):
    """The run is over (``finished``, ``failed`` or ``interrupted``)."""

    step: int
    wall_time: float
    status: Literal["finished", "failed", "interrupted"] = "finished"


class Plan(Record, frozen=True, kw_only=True, tag="lr_plan"):
    """The LR the scheduler will set (first group) from ``step`` on, as knots with straight
    lines between them (``edgewatch.monitor.plan``). Sent at the first step and again when
    the LR leaves the plan or the plan runs out; the newest plan replaces the others."""

    step: int
    wall_time: float
    steps: list[int]
    lrs: list[float]
    source: str = ""
    """What the plan came from: the scheduler's class name, or ``function``."""


AnyRecord: TypeAlias = JobStart | Step | Sharpness | Event | JobEnd | Plan


class Batch(msgspec.Struct, frozen=True, kw_only=True, tag="batch"):
    """One frame from one client run: records of a single job, in sequence order."""

    protocol: int = PROTOCOL_VERSION
    job: str
    run: int
    frame_id: int
    """Client-chosen id the daemon echoes in its Ack/Nack."""
    dropped: int = 0
    """Records this run has dropped so far (queue overflow), cumulative."""
    records: list[AnyRecord]


class Ack(msgspec.Struct, frozen=True, kw_only=True, tag="ack"):
    """The frame's records are committed (``stored`` new, ``duplicates`` seen before)."""

    protocol: int = PROTOCOL_VERSION
    frame_id: int
    stored: int
    duplicates: int = 0
    rejected: int = 0
    """Records refused one by one (see ``reason``); the rest of the frame is stored."""
    reason: str = ""
    stability_ratio: float | None = None
    """The job's current sharpness / threshold as the daemon sees it, raised to at least 1
    while its forecast is not ``stable``; the client measures curvature more often from
    0.8 on."""


RUN_CONFLICT: str = Reject.RUN_CONFLICT.value
"""The Nack reason for a JobStart whose (job, run) the daemon holds from another process
(another host, pid or start time): storing it would take its records for resends."""


class Nack(msgspec.Struct, frozen=True, kw_only=True, tag="nack"):
    """The whole frame was refused and will never be stored; resending it is pointless."""

    protocol: int = PROTOCOL_VERSION
    frame_id: int | None = None
    reason: str
    detail: str = ""


Reply: TypeAlias = Ack | Nack
