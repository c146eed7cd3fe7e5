"""One feeding loop: ``RunAnalysis.feed`` gives the same alerts however the records are
cut (one at a time, as replay used to feed them, or a whole run at once, as the rebuild
feeds it), and ignores resends."""

from __future__ import annotations

import time

from edgewatch.schemas import AnyRecord, Event, Sharpness, Step
from edgewatch.server.analysis import RunAnalysis


def _records() -> list[AnyRecord]:
    now, out, seq = time.time(), [], 0
    for t in range(600):
        seq += 1
        loss = 5.0 if 300 <= t < 310 else 1.0 + 0.01 * (t % 7)
        out.append(
            Step(
                job="j", run=1, seq=seq, step=t, wall_time=now + t, lr=0.1, loss=loss, grad_norm=1.0
            )
        )
        if t % 50 == 49:
            seq += 1
            out.append(
                Sharpness(
                    job="j", run=1, seq=seq, step=t, wall_time=now + t, value=15.0 + t / 20, lr=0.1
                )
            )
    seq += 1
    out.append(Event(job="j", run=1, seq=seq, step=600, wall_time=now + 600, kind="nonfinite_loss"))
    return out


def test_feeding_one_record_at_a_time_or_all_at_once_gives_the_same_alerts() -> None:
    records = _records()
    one, many = (
        RunAnalysis(1, 1, {"kind": "SGD", "lr": 0.1}),
        RunAnalysis(1, 1, {"kind": "SGD", "lr": 0.1}),
    )
    singly = [raised for r in records for raised in one.feed((r,))]
    at_once = many.feed(records + records[:40])  # and a resend, ignored
    assert len(at_once) >= 3 and at_once[-1][0].state == "diverged"
    assert at_once == singly
    assert many.forecast.alerts == one.forecast.alerts
    assert many.last_sharpness == one.last_sharpness
