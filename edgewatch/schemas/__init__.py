"""The versioned wire messages shared by the client and the daemon (no torch here)."""

from edgewatch.schemas.codec import decode_batch, decode_reply, encode, json_schema
from edgewatch.schemas.records import (
    CRITICAL_METHOD,
    PROTOCOL_VERSION,
    RUN_CONFLICT,
    SUPPORTED_PROTOCOLS,
    Ack,
    AnyRecord,
    Batch,
    Event,
    JobEnd,
    JobStart,
    Nack,
    OptimizerInfo,
    Plan,
    Record,
    Reply,
    Sharpness,
    Step,
)
from edgewatch.schemas.reject import Reject

__all__ = [
    "CRITICAL_METHOD",
    "PROTOCOL_VERSION",
    "RUN_CONFLICT",
    "SUPPORTED_PROTOCOLS",
    "Ack",
    "AnyRecord",
    "Batch",
    "Event",
    "JobEnd",
    "JobStart",
    "Nack",
    "OptimizerInfo",
    "Plan",
    "Record",
    "Reject",
    "Reply",
    "Sharpness",
    "Step",
    "decode_batch",
    "decode_reply",
    "encode",
    "json_schema",
]
