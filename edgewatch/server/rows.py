"""Checking decoded records and turning them into insert tuples.

A frame that decodes is still untrusted: each record is checked on its own, and a bad
one is refused with a reason while the rest of its frame is stored. Values the daemon
must never see in a row: integers outside SQL's signed 64 bits (they would fail the
whole transaction), job ids that are empty, huge or carry control characters, negative
learning rates and norms. NaN and Inf losses and gradient norms are *data* (the job is
diverging) and are stored.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from edgewatch.schemas import SUPPORTED_PROTOCOLS, Batch, Event, JobEnd, JobStart, Sharpness, Step
from edgewatch.server.tables import JOB_ID_MAX

INT64_MAX = 2**63 - 1
MAX_RECORDS_PER_FRAME = 100_000
MAX_GROUPS = 4096
MAX_EVENT_DETAIL = 4096

_json = msgspec.json.Encoder()


def check_job_id(job: str) -> str | None:
    """Why this job id cannot be stored, or None when it can."""
    if not job:
        return "empty job id"
    if len(job) > JOB_ID_MAX:
        return f"job id longer than {JOB_ID_MAX} characters"
    if not job.isprintable():
        return "job id has control characters"
    return None


def check_batch(batch: Batch) -> tuple[str, str] | None:
    """(reason, detail) when the whole frame is unusable, else None."""
    problem = check_job_id(batch.job)
    if problem:
        return "bad_job_id", problem
    if not 0 <= batch.run <= INT64_MAX or not 0 <= batch.dropped <= INT64_MAX:
        return "invalid", "run and dropped must be integers in [0, 2**63)"
    if len(batch.records) > MAX_RECORDS_PER_FRAME:
        return "too_many_records", f"{len(batch.records)} records > {MAX_RECORDS_PER_FRAME}"
    return None


def _finite(x: float) -> bool:
    return math.isfinite(x)


def _norm_ok(x: float | None) -> bool:
    # NaN/+Inf norms are how divergence looks; a negative norm is a client bug.
    return x is None or math.isnan(x) or x >= 0


def _int_ok(*values: int | None) -> bool:
    return all(v is None or 0 <= v <= INT64_MAX for v in values)


def check_record(record: JobStart | Step | Sharpness | Event | JobEnd, batch: Batch) -> str | None:
    """Why this record cannot be stored (the metric reason), or None."""
    if record.job != batch.job or record.run != batch.run:
        return "job_mismatch"
    if record.protocol not in SUPPORTED_PROTOCOLS:
        return "protocol_version"
    if not _int_ok(record.seq):
        return "invalid_value"
    match record:
        case Step():
            ok = (
                _int_ok(record.step, record.tokens)
                and _finite(record.wall_time)
                and _finite(record.lr)
                and record.lr >= 0
                and _norm_ok(record.grad_norm)
                and _norm_ok(record.update_norm)
                and (record.loss_scale is None or record.loss_scale > 0)
                and (
                    record.group_lrs is None
                    or (
                        len(record.group_lrs) <= MAX_GROUPS
                        and all(_finite(x) and x >= 0 for x in record.group_lrs)
                    )
                )
            )
        case Sharpness():
            ok = (
                _int_ok(record.step, record.matvecs, record.probe_batch)
                and _finite(record.wall_time)
                and _finite(record.value)
                and record.seconds >= 0
                and len(record.method) <= 32
            )
        case Event():
            ok = (
                _int_ok(record.step)
                and _finite(record.wall_time)
                and 0 < len(record.kind) <= 64
                and len(record.detail) <= MAX_EVENT_DETAIL
            )
        case JobStart() | JobEnd():
            ok = _finite(record.wall_time) and (
                not isinstance(record, JobEnd) or _int_ok(record.step)
            )
    return None if ok else "invalid_value"


def step_row(pk: int, r: Step) -> tuple[Any, ...]:
    group_lrs = _json.encode(r.group_lrs).decode() if r.group_lrs is not None else None
    return (
        pk,
        r.run,
        r.seq,
        r.step,
        r.wall_time,
        r.lr,
        group_lrs,
        r.loss,
        r.grad_norm,
        r.update_norm,
        r.loss_scale,
        r.tokens,
    )


def sharpness_row(pk: int, r: Sharpness) -> tuple[Any, ...]:
    return (
        pk,
        r.run,
        r.seq,
        r.step,
        r.wall_time,
        r.value,
        r.preconditioned,
        r.method,
        r.matvecs,
        r.residual,
        r.probe_batch,
        r.seconds,
    )


def event_row(pk: int, r: Event) -> tuple[Any, ...]:
    return (pk, r.run, r.seq, r.step, r.wall_time, r.kind, r.detail)
