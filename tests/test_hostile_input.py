"""Garbage, lies and repeats on the socket: counted, refused, never fatal."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import zmq
from conftest import metric

from edgewatch.schemas import Ack, Batch, JobStart, Nack, OptimizerInfo, Step, decode_reply, encode
from edgewatch.server import Daemon
from edgewatch_testkit.toy import run_toy


@pytest.fixture
def dealer(daemon: Daemon) -> Iterator[zmq.Socket[Any]]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(daemon.endpoint)
    yield sock
    sock.close()
    ctx.term()


def start(job: str, run: int = 1) -> JobStart:
    return JobStart(
        job=job, run=run, seq=0, wall_time=time.time(), optimizer=OptimizerInfo(kind="SGD", lr=0.1)
    )


def step(job: str, seq: int, run: int = 1, **fields: Any) -> Step:
    values = {
        "step": seq,
        "wall_time": time.time(),
        "lr": 0.1,
        "loss": 1.0,
        "grad_norm": 1.0,
    } | fields
    return Step(job=job, run=run, seq=seq, **values)


def send(sock: zmq.Socket[Any], job: str, records: list[Any], frame_id: int = 1) -> Ack | Nack:
    sock.send(encode(Batch(job=job, run=1, frame_id=frame_id, records=records)))
    return decode_reply(sock.recv())


def test_garbage_between_good_traffic_is_counted_and_the_good_is_stored(
    daemon: Daemon, dealer: zmq.Socket[Any]
) -> None:
    good = encode(
        Batch(
            job="g", run=1, frame_id=1, records=[start("g"), *[step("g", i) for i in range(1, 50)]]
        )
    )
    garbage = [os.urandom(n) for n in (1, 17, 500, 4096)]
    garbage += [good[:10], good[: len(good) // 2], good[:-1]]  # truncated frames
    for frame in garbage:
        dealer.send(frame)
    dealer.send(good)
    for frame in garbage:
        dealer.send(frame)
    replies = [decode_reply(dealer.recv()) for _ in range(2 * len(garbage) + 1)]
    acks = [r for r in replies if isinstance(r, Ack)]
    assert len(acks) == 1 and acks[0].stored == 49
    nacks = [r for r in replies if isinstance(r, Nack)]
    assert len(nacks) == 2 * len(garbage)
    rejected = sum(
        metric(daemon, "edgewatch_messages_rejected_total", reason=r) or 0
        for r in ("malformed", "invalid")
    )
    assert rejected == 2 * len(garbage)
    # ... and a well-behaved client afterwards is served normally.
    mon = run_toy("after-garbage", daemon.endpoint, 300)
    assert mon.stats["acknowledged"] == mon.stats["records"]
    assert daemon.store.count("steps", daemon.jobs.get("after-garbage").pk) == 300  # type: ignore[union-attr]


def test_multipart_and_oversized_frames_are_rejected(make_daemon: Any) -> None:
    daemon = make_daemon(max_frame_bytes=1000)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(daemon.endpoint)
    try:
        sock.send_multipart([b"a", b"b"])
        assert decode_reply(sock.recv()).reason == "malformed"  # type: ignore[union-attr]
        # Between the limit and twice it, the daemon reads the frame and counts it; past
        # twice the limit ZeroMQ itself drops the connection before the bytes arrive.
        records = [step("big", 1)]
        while len(encode(Batch(job="big", run=1, frame_id=9, records=records))) <= 1000:
            records.append(step("big", len(records) + 1))
        frame = encode(Batch(job="big", run=1, frame_id=9, records=records))
        assert 1000 < len(frame) < 2000
        sock.send(frame)
        reply = decode_reply(sock.recv())
        assert isinstance(reply, Nack) and reply.reason == "oversized"
        assert metric(daemon, "edgewatch_messages_rejected_total", reason="oversized") == 1
    finally:
        sock.close(0)
        ctx.term()


def test_a_frame_of_an_unknown_job_is_refused_whole(
    daemon: Daemon, dealer: zmq.Socket[Any]
) -> None:
    # Refused as a frame (a Nack), not record by record: the client keeps it and sends
    # its JobStart again first (tests/test_daemon_process.py).
    reply = send(dealer, "ghost", [step("ghost", i) for i in range(1, 6)])
    assert isinstance(reply, Nack) and reply.reason == "unknown_job"
    assert metric(daemon, "edgewatch_messages_rejected_total", reason="unknown_job") == 1
    assert daemon.jobs.get("ghost") is None and daemon.store.count("steps") == 0


def test_bad_values_are_refused_one_by_one_and_nonfinite_losses_kept(
    daemon: Daemon, dealer: zmq.Socket[Any]
) -> None:
    nan, inf = float("nan"), float("inf")
    records = [
        start("v"),
        step("v", 1, loss=nan, grad_norm=nan),  # divergence: kept
        step("v", 2, loss=inf, grad_norm=inf),  # kept
        step("v", 3, lr=-0.1),  # refused: negative LR
        step("v", 4, lr=nan),  # refused
        step("v", 5, grad_norm=-1.0),  # refused
        step("v", 6, step=2**63),  # refused: beyond SQL's BIGINT
        Step(
            job="other", run=1, seq=7, step=7, wall_time=1.0, lr=0.1
        ),  # refused: not this frame's job
        step("v", 8),  # kept
    ]
    reply = send(dealer, "v", records)
    assert isinstance(reply, Ack), reply
    assert (reply.stored, reply.rejected) == (3, 5)
    assert reply.reason == "invalid_value,job_mismatch"
    steps = daemon.store.steps(daemon.jobs.get("v").pk)  # type: ignore[union-attr]
    assert [s["step"] for s in steps] == [1, 2, 8]
    assert steps[1]["loss"] == inf
    assert metric(daemon, "edgewatch_messages_rejected_total", reason="invalid_value") == 4


def test_odd_job_ids_are_refused_with_a_reason(daemon: Daemon, dealer: zmq.Socket[Any]) -> None:
    for job in ("", "x" * 201, "tab\there"):
        reply = send(dealer, job, [])
        assert isinstance(reply, Nack) and reply.reason == "bad_job_id", job
    unicode_job = "训练-run/α β"
    reply = send(dealer, unicode_job, [start(unicode_job), step(unicode_job, 1)])
    assert isinstance(reply, Ack) and reply.stored == 1


def test_a_resent_frame_is_acknowledged_again_and_stored_once(
    daemon: Daemon, dealer: zmq.Socket[Any]
) -> None:
    records = [start("dup"), *[step("dup", i) for i in range(1, 101)]]
    first = send(dealer, "dup", records, frame_id=1)
    again = send(dealer, "dup", records, frame_id=1)
    assert isinstance(first, Ack) and (first.stored, first.duplicates) == (100, 0)
    assert isinstance(again, Ack) and (again.stored, again.duplicates) == (0, 100)
    assert daemon.store.count("steps") == 100
    assert metric(daemon, "edgewatch_records_ingested_total") == 100


def test_unknown_record_types_are_invalid_not_fatal(
    daemon: Daemon, dealer: zmq.Socket[Any]
) -> None:
    frame = msgspec.msgpack.encode(
        {
            "type": "batch",
            "job": "u",
            "run": 1,
            "frame_id": 1,
            "records": [{"type": "telemetry", "job": "u", "run": 1, "seq": 1}],
        }
    )
    dealer.send(frame)
    reply = decode_reply(dealer.recv())
    assert isinstance(reply, Nack) and reply.reason == "invalid"
    assert send(dealer, "u", [start("u")]).stored == 0  # type: ignore[union-attr]
