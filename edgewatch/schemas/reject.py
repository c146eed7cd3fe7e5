"""Why the daemon refuses a frame or a record: the ``reason`` of a Nack (and of an Ack's
refused records), and the ``reason`` label of ``edgewatch_messages_rejected_total``.

The values are wire strings: a member's value never changes (clients compare
``Nack.reason`` with them, alert rules and dashboards select on them); a new reason is a
new member. docs/runbook.md (EdgewatchRejectingMessages) says what to do about each.
"""

from __future__ import annotations

import enum


class Reject(str, enum.Enum):
    """A reason for refusing input; ``str`` valued, so it goes on the wire as its value."""

    OVERSIZED = "oversized"
    """The frame is larger than ``max_frame_bytes``."""
    MALFORMED = "malformed"
    """Not a MessagePack frame of the wire protocol (or not one part after the identity)."""
    INVALID = "invalid"
    """MessagePack, but not a valid Batch (a field of the wrong type, out-of-range ints)."""
    PROTOCOL_VERSION = "protocol_version"
    """A protocol version this daemon does not speak (a client newer than the daemon)."""
    BAD_JOB_ID = "bad_job_id"
    """The job id is empty, too long or has control characters."""
    TOO_MANY_RECORDS = "too_many_records"
    """More records in one frame than the daemon takes."""
    JOB_MISMATCH = "job_mismatch"
    """A record of another job or run than its frame's."""
    INVALID_VALUE = "invalid_value"
    """A value no row may hold: a NaN or negative LR, a negative norm, an int past 64 bits."""
    UNKNOWN_JOB = "unknown_job"
    """Records of a job whose JobStart the daemon has not seen."""
    RUN_CONFLICT = "run_conflict"
    """A JobStart of a (job, run) the daemon holds from another process."""
    STORE_ERROR = "store_error"
    """The database refused the frame on its own (the rest of its transaction committed)."""
    UNAUTHORIZED = "unauthorized"
    """CURVE: a client key not on the allow-list."""
    HANDSHAKE = "handshake"
    """CURVE: a handshake that failed otherwise (no CURVE, a broken client)."""

    def __str__(self) -> str:  # logs and f-strings show the wire value, as before
        return self.value
