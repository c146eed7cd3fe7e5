"""The daemon's own counters (exported on /metrics) and its rate-limited log of
rejections: hostile traffic is counted, never a flood in the log."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from typing import Any

log = logging.getLogger("edgewatch.server.ingest")


@dataclasses.dataclass
class DaemonCounters:
    """Daemon-wide counters exported on /metrics."""

    records_ingested: int = 0
    rejected: Counter[str] = dataclasses.field(default_factory=Counter)
    ingest_lag_seconds: float = 0.0
    commits: int = 0
    retention_partitions: int = 0
    """Step partitions dropped by retention (PostgreSQL)."""
    retention_rows: int = 0
    """Step rows dropped by retention (their block summaries kept)."""


class RateLimitedLog:
    """One log line per reason per minute: hostile traffic must not flood the log."""

    def __init__(self, period: float = 60.0) -> None:
        self.period = period
        self.last: dict[str, float] = {}

    def warning(self, reason: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self.last.get(reason, -self.period) >= self.period:
            self.last[reason] = now
            log.warning(
                message + " (further '%s' rejections are counted, logged once a minute)",
                *args,
                reason,
            )
