"""Exceptions raised by edgewatch.

    EdgewatchError                 base of everything edgewatch raises on purpose
    ├── ConfigError (ValueError)   a setting is missing, malformed or contradictory
    ├── FrameRejected              the daemon refuses a frame; ``reason`` is the metric label
    └── ApiError                   the CLI could not get an answer from the daemon's HTTP API

Inside the training process none of these reach the training loop: the client
catches, counts and logs every failure of its own (see ``edgewatch.client``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgewatch.schemas.reject import Reject


class EdgewatchError(Exception):
    """Base class of the errors edgewatch raises on purpose."""


class ConfigError(EdgewatchError, ValueError):
    """A setting is missing, malformed or contradictory; the message says how to fix it."""


class FrameRejected(EdgewatchError):
    """A frame (or a record in it) the daemon will not store.

    ``reason`` (``edgewatch.schemas.Reject``) becomes the Nack's reason and the ``reason``
    label of ``edgewatch_messages_rejected_total``. ``detail`` is for the log line.
    """

    def __init__(self, reason: Reject, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ApiError(EdgewatchError):
    """The daemon's HTTP API could not be reached or answered with an error."""
