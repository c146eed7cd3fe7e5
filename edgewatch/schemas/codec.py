"""Encoding and decoding of frames: one typed decoder per direction, built once.

The daemon never trusts a frame: :func:`decode_batch` turns every way a frame can be
wrong into a :class:`FrameRejected` with a short, stable ``reason`` that becomes the
``reason`` label of ``edgewatch_messages_rejected_total``.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from edgewatch.errors import FrameRejected
from edgewatch.schemas.records import SUPPORTED_PROTOCOLS, Batch, Reply
from edgewatch.schemas.reject import Reject

_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(Batch)
_reply_decoder: msgspec.msgpack.Decoder[Reply] = msgspec.msgpack.Decoder(Reply)


class _Envelope(msgspec.Struct):
    """The one field every version of a frame keeps: read when a full decode fails."""

    protocol: int


_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)


def encode(message: msgspec.Struct) -> bytes:
    """Encode a Batch, Ack or Nack as MessagePack."""
    return _encoder.encode(message)


def decode_batch(frame: bytes, max_bytes: int) -> Batch:
    """Decode a client frame or raise :class:`FrameRejected` saying why not.

    Reasons: ``oversized``, ``malformed`` (not MessagePack), ``protocol_version``
    (a version this daemon does not speak), ``invalid`` (MessagePack that is not a
    Batch of known records).
    """
    if len(frame) > max_bytes:
        raise FrameRejected(Reject.OVERSIZED, f"{len(frame)} bytes > limit {max_bytes}")
    try:
        batch = _batch_decoder.decode(frame)
    except msgspec.ValidationError as exc:
        # A frame from a newer client may fail only because of what its version added:
        # name the version problem rather than the symptom.
        version = _peek_protocol(frame)
        if version is not None and version not in SUPPORTED_PROTOCOLS:
            raise FrameRejected(
                Reject.PROTOCOL_VERSION, f"protocol {version} not supported"
            ) from exc
        raise FrameRejected(Reject.INVALID, str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise FrameRejected(Reject.MALFORMED, str(exc)) from exc
    if batch.protocol not in SUPPORTED_PROTOCOLS:
        raise FrameRejected(Reject.PROTOCOL_VERSION, f"protocol {batch.protocol} not supported")
    return batch


def _peek_protocol(frame: bytes) -> int | None:
    try:
        return _envelope_decoder.decode(frame).protocol
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def decode_reply(frame: bytes) -> Reply:
    """Decode the daemon's answer (client side); raises msgspec errors on garbage."""
    reply: Reply = _reply_decoder.decode(frame)
    return reply


def json_schema() -> dict[str, Any]:
    """JSON Schema of both directions, for clients written in other languages."""
    schema: dict[str, Any] = msgspec.json.schema(Batch | Reply)
    schema["$comment"] = (
        "edgewatch wire protocol: frames are MessagePack encodings of these objects; "
        f"supported protocol versions {sorted(SUPPORTED_PROTOCOLS)}"
    )
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True)
