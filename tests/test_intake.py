"""The intake without a socket: bytes in, replies and rows out (server/intake.py)."""

from __future__ import annotations

from pathlib import Path

from edgewatch.schemas import (
    Ack,
    Batch,
    JobStart,
    Nack,
    OptimizerInfo,
    Step,
    encode,
)
from edgewatch.server.config import Settings
from edgewatch.server.counters import DaemonCounters
from edgewatch.server.intake import Intake
from edgewatch.server.state import JobTable
from edgewatch.server.store import Store

PEER = b"peer-1"


def make_intake(tmp_path: Path) -> Intake:
    settings = Settings(db=f"sqlite:///{tmp_path / 'e.db'}")
    return Intake(settings, Store(settings.db), JobTable(), DaemonCounters())


def frame(frame_id: int, *records: JobStart | Step, job: str = "j") -> bytes:
    return encode(Batch(job=job, run=1, frame_id=frame_id, records=list(records)))


START = JobStart(job="j", run=1, seq=0, wall_time=1.0, optimizer=OptimizerInfo(kind="SGD", lr=0.1))


def step(i: int) -> Step:
    return Step(job="j", run=1, seq=i + 1, step=i, wall_time=1.0 + i, lr=0.1, loss=1.0)


def test_a_frame_is_acknowledged_only_after_its_commit(tmp_path: Path) -> None:
    intake = make_intake(tmp_path)
    assert intake.receive(PEER, [frame(7, START, step(0), step(1))]) == []
    assert intake.pending_rows == 2 and intake.deadline is not None
    replies = intake.commit()
    assert [(peer, type(m)) for peer, m in replies] == [(PEER, Ack)]
    ack = replies[0][1]
    assert isinstance(ack, Ack) and (ack.frame_id, ack.stored, ack.duplicates) == (7, 2, 0)
    state = intake.jobs.get("j")
    assert state is not None and state.records == 2 and state.last_step == 1
    assert intake.counters.records_ingested == 2
    # A resent frame: acknowledged again, stored once.
    intake.receive(PEER, [frame(7, START, step(0), step(1))])
    ((_, again),) = intake.commit()
    assert isinstance(again, Ack) and (again.stored, again.duplicates) == (0, 2)


def test_refusals_are_nacks_with_a_counted_reason(tmp_path: Path) -> None:
    intake = make_intake(tmp_path)
    ((peer, nack),) = intake.receive(PEER, [b"\xc1 not msgpack"])
    assert peer == PEER and isinstance(nack, Nack) and nack.frame_id is None
    ((_, parts),) = intake.receive(PEER, [b"a", b"b"])
    assert isinstance(parts, Nack) and parts.reason == "malformed"
    ((_, unknown),) = intake.receive(PEER, [frame(3, step(0))])  # no JobStart yet
    assert isinstance(unknown, Nack) and (unknown.frame_id, unknown.reason) == (3, "unknown_job")
    assert intake.counters.rejected["unknown_job"] == 1
    assert intake.counters.rejected["malformed"] == 2  # not MessagePack; two parts
    assert intake.commit() == []  # nothing pending, nothing acknowledged


def test_reject_reasons_are_the_wire_strings_the_metric_and_the_runbook_name() -> None:
    from edgewatch.schemas import Reject, decode_reply
    from edgewatch.server.metrics import REJECT_REASONS

    nack = decode_reply(encode(Nack(frame_id=1, reason=Reject.RUN_CONFLICT)))
    assert isinstance(nack, Nack) and type(nack.reason) is str and nack.reason == "run_conflict"
    assert f"{Reject.MALFORMED}" == str(Reject.MALFORMED) == "malformed"
    assert set(REJECT_REASONS) == {r.value for r in Reject}
    runbook = (Path(__file__).parent.parent / "docs" / "runbook.md").read_text()
    assert all(f"| `{r.value}` |" in runbook for r in Reject)
