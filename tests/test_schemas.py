"""The wire format: what decodes, what is refused and why, what other languages see."""

from __future__ import annotations

import json
import subprocess
import sys

import msgspec
import pytest

from edgewatch.errors import FrameRejected
from edgewatch.schemas import (
    PROTOCOL_VERSION,
    Ack,
    Batch,
    Event,
    JobEnd,
    JobStart,
    Nack,
    OptimizerInfo,
    Sharpness,
    Step,
    decode_batch,
    decode_reply,
    encode,
)

LIMIT = 1 << 20


def sample_batch() -> Batch:
    common = {"job": "j", "run": 7}
    return Batch(
        job="j",
        run=7,
        frame_id=3,
        dropped=2,
        records=[
            JobStart(
                **common,
                seq=1,
                wall_time=1.0,
                optimizer=OptimizerInfo(kind="AdamW", lr=3e-4, betas=(0.9, 0.95)),
            ),
            Step(**common, seq=2, step=0, wall_time=1.5, lr=3e-4, loss=2.5, grad_norm=float("nan")),
            Sharpness(
                **common, seq=3, step=0, wall_time=1.6, value=12.0, preconditioned=True, matvecs=4
            ),
            Event(**common, seq=4, step=0, wall_time=1.7, kind="nonfinite_grad"),
            JobEnd(**common, seq=5, step=0, wall_time=2.0, status="failed"),
        ],
    )


def test_a_batch_of_every_record_type_round_trips() -> None:
    batch = sample_batch()
    decoded = decode_batch(encode(batch), LIMIT)
    assert [type(r) for r in decoded.records] == [JobStart, Step, Sharpness, Event, JobEnd]
    assert decoded.records[0] == batch.records[0]
    step = decoded.records[1]
    assert isinstance(step, Step) and step.loss == 2.5 and step.grad_norm != step.grad_norm  # NaN
    assert all(r.protocol == PROTOCOL_VERSION for r in decoded.records)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\xc1\xc1\xc1", "malformed"),  # 0xc1 is never valid MessagePack
        (encode(sample_batch())[:-7], "malformed"),  # truncated
        (msgspec.msgpack.encode({"type": "batch", "job": "j"}), "invalid"),  # fields missing
        (msgspec.msgpack.encode([1, 2, 3]), "invalid"),
        (
            msgspec.msgpack.encode(
                {
                    "type": "batch",
                    "protocol": 99,
                    "job": "j",
                    "run": 1,
                    "frame_id": 1,
                    "records": [{"type": "quantum_step", "job": "j"}],
                }
            ),
            "protocol_version",
        ),
        (
            msgspec.msgpack.encode(
                {
                    "type": "batch",
                    "protocol": PROTOCOL_VERSION + 1,
                    "job": "j",
                    "run": 1,
                    "frame_id": 1,
                    "records": [],
                }
            ),
            "protocol_version",
        ),
        (
            msgspec.msgpack.encode(
                {
                    "type": "batch",
                    "job": "j",
                    "run": 1,
                    "frame_id": 1,
                    "records": [
                        {
                            "type": "step",
                            "job": "j",
                            "run": 1,
                            "seq": 1,
                            "step": "ten",
                            "wall_time": 0.0,
                            "lr": 0.1,
                        }
                    ],
                }
            ),
            "invalid",
        ),
        (b"x" * (LIMIT + 1), "oversized"),
    ],
)
def test_bad_frames_are_refused_with_a_stable_reason(frame: bytes, reason: str) -> None:
    with pytest.raises(FrameRejected) as info:
        decode_batch(frame, LIMIT)
    assert info.value.reason == reason


def test_replies_decode_on_the_client_side() -> None:
    assert decode_reply(encode(Ack(frame_id=4, stored=10, duplicates=2))) == Ack(
        frame_id=4, stored=10, duplicates=2
    )
    nack = decode_reply(encode(Nack(frame_id=None, reason="malformed")))
    assert isinstance(nack, Nack) and nack.reason == "malformed"


def test_edgewatch_schema_prints_a_json_schema_of_both_directions() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgewatch", "schema"], capture_output=True, text=True, check=True
    ).stdout
    schema = json.loads(out)
    defs = schema["$defs"]
    for name in ("Batch", "Step", "JobStart", "Sharpness", "Event", "JobEnd", "Ack", "Nack"):
        assert name in defs, name
    step = defs["Step"]
    assert {"protocol", "job", "run", "seq", "step", "wall_time", "lr"} <= set(step["properties"])
    assert step["properties"]["type"]["enum"] == ["step"]
