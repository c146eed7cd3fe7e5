"""Ports, HTTP and raw frames for tests and benchmarks that talk to real daemons."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Sequence
from typing import Any

import zmq

from edgewatch.schemas import Ack, Batch, JobStart, decode_reply, encode


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def send_frames(
    endpoint: str, records: Sequence[Any], per_frame: int = 100, restart: bool = False
) -> tuple[int, int]:
    """Send ``records`` (of one job and run, ``records[0]`` its JobStart) to a daemon as a
    client would, ``per_frame`` to a frame, each waiting for its Ack; (stored, duplicates)
    summed over the Acks. ``restart``: every frame opens with the JobStart, as a resend's
    does, so that any slice of a job's records can be sent again on its own."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 20_000)
    sock.connect(endpoint)
    stored = duplicates = 0
    try:
        for frame_id, first in enumerate(range(0, len(records), per_frame), 1):
            chunk = list(records[first : first + per_frame])
            if restart and not isinstance(chunk[0], JobStart):
                chunk.insert(0, records[0])
            job, run = chunk[0].job, chunk[0].run
            sock.send(encode(Batch(job=job, run=run, frame_id=frame_id, records=chunk)))
            reply = decode_reply(sock.recv())
            assert isinstance(reply, Ack), reply
            stored, duplicates = stored + reply.stored, duplicates + reply.duplicates
    finally:
        sock.close()
        ctx.term()
    return stored, duplicates
