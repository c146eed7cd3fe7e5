"""Property-based fuzzing of the decoder, the record checks and a live daemon.

Whatever arrives, the daemon answers with a counted rejection or stores what is valid,
and never raises. bench/perf/fuzz.py (`make bench-fuzz`) sends 100,000 generated frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgewatch.errors import FrameRejected
from edgewatch.schemas import Ack, Batch, Nack, decode_batch, decode_reply, encode
from edgewatch.server import Daemon, rows

FIELDS = [
    "type",
    "protocol",
    "job",
    "run",
    "seq",
    "frame_id",
    "dropped",
    "records",
    "step",
    "wall_time",
    "lr",
    "loss",
    "grad_norm",
    "group_lrs",
    "value",
    "kind",
    "status",
    "optimizer",
    "matvecs",
    "tokens",
    "loss_scale",
]
TAGS = ["batch", "step", "sharpness", "event", "job_start", "job_end", "ack", "bogus", ""]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # all msgpack can encode
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(TAGS)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=8)
    ),
    max_leaves=15,
)


def record_like(job: str) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts shaped like records, with each field sometimes of the wrong type or range."""
    return st.fixed_dictionaries(
        {
            "type": st.sampled_from(TAGS),
            "job": st.just(job) | st.text(max_size=5),
            "run": st.just(1) | st.integers(min_value=-5, max_value=2**64 - 1),
            "seq": st.integers(min_value=-3, max_value=2**64 - 1),
        },
        optional={name: values for name in FIELDS[7:]},
    )


frames = (
    st.binary(max_size=300)
    | values.map(msgspec.msgpack.encode)
    | st.builds(
        lambda recs, proto: msgspec.msgpack.encode(
            {
                "type": "batch",
                "protocol": proto,
                "job": "fz",
                "run": 1,
                "frame_id": 1,
                "records": recs,
            }
        ),
        st.lists(record_like("fz"), max_size=6),
        st.sampled_from([1, 1, 1, 2, 0]),
    )
)


@settings(max_examples=400, deadline=None)
@given(frames)
def test_the_decoder_and_checks_never_raise_anything_else(frame: bytes) -> None:
    try:
        batch = decode_batch(frame, 1 << 20)
    except FrameRejected as exc:
        assert exc.reason in {"malformed", "invalid", "protocol_version", "oversized"}
        return
    problem = rows.check_batch(batch)
    if problem is None:
        for record in batch.records:
            reason = rows.check_record(record, batch.job, batch.run)
            if reason is None and hasattr(record, "lr") and record.lr is not None:
                assert math.isfinite(record.lr) and record.lr >= 0


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[Daemon, zmq.Socket[Any]]]:
    import tempfile

    from edgewatch.server import Settings

    with tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(
            Settings(
                db=f"sqlite:///{tmp}/fuzz.db",
                bind="tcp://127.0.0.1:*",
                http="127.0.0.1:0",
                commit_interval=0.01,
            )
        ).start()
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(daemon.endpoint)
        try:
            yield daemon, sock
        finally:
            sock.close()
            ctx.term()
            daemon.stop()


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=frames)
def test_a_live_daemon_answers_every_frame_and_keeps_serving(
    live: tuple[Daemon, zmq.Socket[Any]], frame: bytes
) -> None:
    daemon, sock = live
    sock.send(frame)
    reply = decode_reply(sock.recv())  # every frame gets an answer: Ack or Nack
    assert isinstance(reply, Ack | Nack)
    # A good frame right after is still acknowledged: the daemon is alive and well.
    good = Batch(job="fuzz-probe", run=7, frame_id=2, records=[])
    sock.send(encode(good))
    assert isinstance(decode_reply(sock.recv()), Ack | Nack)
    assert daemon._ingest_thread.is_alive()
