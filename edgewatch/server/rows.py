"""Checking decoded records and turning them into insert tuples.

A frame that decodes is still untrusted: each record is checked on its own, and a bad
one is refused with a reason while the rest of its frame is stored. Values the daemon
must never see in a row: integers outside SQL's signed 64 bits (they would fail the
whole transaction), job ids that are empty, huge or carry control characters, negative
learning rates and norms. NaN and Inf losses and gradient norms are *data* (the job is
diverging) and are stored.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgspec

from edgewatch.schemas import (
    SUPPORTED_PROTOCOLS,
    Batch,
    Event,
    JobEnd,
    JobStart,
    Plan,
    Reject,
    Sharpness,
    Step,
)
from edgewatch.server.tables import FRAME_FIELDS, INSERT_COLUMNS, JOB_ID_MAX

INT64_MAX = 2**63 - 1
MAX_RECORDS_PER_FRAME = 100_000
MAX_GROUPS = 4096
MAX_EVENT_DETAIL = 4096
MAX_PLAN_KNOTS = 4096  # the client sends a few dozen; a cosine over 4096 steps needs ~100
INF = float("inf")

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


def check_batch(batch: Batch) -> tuple[Reject, str] | None:
    """(reason, detail) when the whole frame is unusable, else None."""
    problem = check_job_id(batch.job)
    if problem:
        return Reject.BAD_JOB_ID, problem
    if not 0 <= batch.run <= INT64_MAX or not 0 <= batch.dropped <= INT64_MAX:
        return Reject.INVALID, "run and dropped must be integers in [0, 2**63)"
    if len(batch.records) > MAX_RECORDS_PER_FRAME:
        return Reject.TOO_MANY_RECORDS, f"{len(batch.records)} records > {MAX_RECORDS_PER_FRAME}"
    return None


def _int_ok(*values: int | None) -> bool:
    return all(v is None or 0 <= v <= INT64_MAX for v in values)


def check_step(r: Step, job: str, run: int) -> Reject | None:
    """The hot path's check, written out flat: it runs for nearly every record.

    NaN fails every comparison, so ``0 <= lr < INF`` refuses a NaN learning rate while
    ``grad_norm < 0`` lets a NaN gradient norm through, as data.
    """
    if r.job != job or r.run != run:
        return Reject.JOB_MISMATCH
    if r.protocol not in SUPPORTED_PROTOCOLS:
        return Reject.PROTOCOL_VERSION
    if not (
        0 <= r.seq <= INT64_MAX
        and 0 <= r.step <= INT64_MAX
        and 0.0 <= r.lr < INF
        and -INF < r.wall_time < INF
    ):
        return Reject.INVALID_VALUE
    g, u, scale, m = r.grad_norm, r.update_norm, r.loss_scale, r.moment_ratio
    if (g is not None and g < 0) or (u is not None and u < 0) or (m is not None and m < 0):
        return Reject.INVALID_VALUE
    if (scale is not None and not scale > 0) or (r.tokens is not None and not _int_ok(r.tokens)):
        return Reject.INVALID_VALUE
    if r.group_lrs is not None and not (
        len(r.group_lrs) <= MAX_GROUPS and all(0.0 <= x < INF for x in r.group_lrs)
    ):
        return Reject.INVALID_VALUE
    return None


def check_record(
    record: JobStart | Step | Sharpness | Event | JobEnd | Plan, job: str, run: int
) -> Reject | None:
    """Why this record cannot be stored (the metric reason), or None."""
    if isinstance(record, Step):
        return check_step(record, job, run)
    if record.job != job or record.run != run:
        return Reject.JOB_MISMATCH
    if record.protocol not in SUPPORTED_PROTOCOLS:
        return Reject.PROTOCOL_VERSION
    if not (_int_ok(record.seq) and -INF < record.wall_time < INF):
        return Reject.INVALID_VALUE
    match record:
        case Sharpness():
            ok = (
                _int_ok(record.step, record.matvecs, record.probe_batch)
                and -INF < record.value < INF
                and record.seconds >= 0
                and len(record.method) <= 32
                and (record.lr is None or 0.0 <= record.lr < INF)
                and (record.update_curvature is None or -INF < record.update_curvature < INF)
                and (record.eta_max is None or -INF < record.eta_max < INF)
            )
        case Event():
            ok = (
                _int_ok(record.step)
                and 0 < len(record.kind) <= 64
                and len(record.detail) <= MAX_EVENT_DETAIL
            )
        case JobEnd():
            ok = _int_ok(record.step)
        case Plan():
            steps, lrs = record.steps, record.lrs
            ok = (
                _int_ok(record.step)
                and 0 < len(steps) == len(lrs) <= MAX_PLAN_KNOTS
                and _int_ok(*steps)
                and all(a < b for a, b in itertools.pairwise(steps))
                and all(0.0 <= x < INF for x in lrs)
                and len(record.source) <= 64
            )
        case JobStart():
            ok = True
    return None if ok else Reject.INVALID_VALUE


# The rows are the records' fields in their Struct's order (``tables.record_columns``),
# less the frame's, after the job's key.
_OWN = len(FRAME_FIELDS)
_GROUP_LRS = INSERT_COLUMNS["steps"].index("group_lrs")


def step_row(pk: int, r: Step) -> tuple[Any, ...]:
    row = (pk, *msgspec.structs.astuple(r)[_OWN:])
    if r.group_lrs is None:
        return row
    encoded = _json.encode(r.group_lrs).decode()  # a JSON column travels as text
    return (*row[:_GROUP_LRS], encoded, *row[_GROUP_LRS + 1 :])


def sharpness_row(pk: int, r: Sharpness) -> tuple[Any, ...]:
    return (pk, *msgspec.structs.astuple(r)[_OWN:])


def event_row(pk: int, r: Event) -> tuple[Any, ...]:
    return (pk, *msgspec.structs.astuple(r)[_OWN:])


_PLAN_KNOTS = tuple(INSERT_COLUMNS["plans"].index(name) for name in ("steps", "lrs"))


def plan_row(pk: int, r: Plan) -> tuple[Any, ...]:
    row = (pk, *msgspec.structs.astuple(r)[_OWN:])
    return tuple(_json.encode(v).decode() if i in _PLAN_KNOTS else v for i, v in enumerate(row))
