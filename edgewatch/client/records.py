"""What the training thread hands the sender, and the records a chunk of steps becomes.

``step_records`` is a pure function of a chunk's rows, the values read back for them and
the sequence number before them: the sender owns the numbering, this module owns the
shape of the records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypeAlias

from edgewatch.client.readback import VALUES_PER_ROW, Packed, Row
from edgewatch.client.schedule import Lookahead
from edgewatch.schemas import AnyRecord, Event, Step

INF = float("inf")


@dataclasses.dataclass
class StepChunk:
    """Steps shipped together by the training thread.

    ``rows`` as the monitor keeps them; ``packed`` holds the loss, gradient norm and loss
    scale of each step as floats, interleaved: [loss0, norm0, scale0, loss1, ...]
    (device values read back once ``packed.ready()``).
    """

    rows: list[Row]
    packed: Packed


@dataclasses.dataclass
class RecordItem:
    """A non-step record to send; the sender fills in job, run and seq."""

    kind: type[AnyRecord]
    fields: dict[str, Any]


@dataclasses.dataclass
class PlanItem:
    """A snapshot of the LR schedule, stepped ahead on the sender thread into a Plan."""

    lookahead: Lookahead


Item: TypeAlias = StepChunk | RecordItem | PlanItem


def ready(item: Item) -> bool:
    """Whether the item's device values (if any) have been read back."""
    return not isinstance(item, StepChunk) or item.packed.ready()


def step_records(
    rows: Sequence[Row], values: Sequence[float | None], job: str, run: int, seq: int
) -> list[AnyRecord]:
    """The Step records of ``rows`` (and an Event after each non-finite one), numbered
    from ``seq + 1`` on: the next free number is ``seq + len(result)``.

    ``values``: the chunk's read-back floats, VALUES_PER_ROW per row, interleaved.
    """
    # This loop is the sender's per-record cost (CPU the training thread may wait
    # for, through the GIL): locals, no helper calls.
    records: list[AnyRecord] = []
    for (step, wall_time, lrs, *_), loss, grad_norm, loss_scale, update, ratio in zip(
        rows, *(values[i::VALUES_PER_ROW] for i in range(VALUES_PER_ROW)), strict=True
    ):
        seq += 1
        lrs = [float(lr) for lr in lrs]  # group LRs may be tensors (capturable optimizers)
        group_lrs = lrs if len(lrs) > 1 and lrs.count(lrs[0]) != len(lrs) else None
        records.append(
            Step(
                job=job,
                run=run,
                seq=seq,
                step=step,
                wall_time=wall_time,
                lr=lrs[0],
                group_lrs=group_lrs,
                loss=loss,
                grad_norm=grad_norm,
                loss_scale=loss_scale,
                update_norm=update,
                moment_ratio=ratio,
            )
        )
        bad_loss = not (loss is None or -INF < loss < INF)
        if bad_loss or not (grad_norm is None or grad_norm < INF):
            # A stored NaN may come back as NULL (SQLite): the event keeps the fact.
            seq += 1
            kind = "nonfinite_loss" if bad_loss else "nonfinite_grad_norm"
            records.append(
                Event(job=job, run=run, seq=seq, step=step, wall_time=wall_time, kind=kind)
            )
    return records
