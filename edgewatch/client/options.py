"""``attach()``'s keyword options beyond DESIGN.md's signature, as one frozen dataclass.

Each field's docstring is its documentation; ``__post_init__`` refuses a bad value with a
message that says what the value must be. ``attach(**options)`` is typed by
``OptionKeywords``, which names the same fields (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypedDict


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttachOptions:
    """How the monitor buffers, sends, measures and reports; every field has a default."""

    max_buffered: int = 200_000
    """Records held for the daemon, sent or not; past it the oldest are dropped and counted
    (``stats["dropped"]``, reported to the daemon)."""

    flush_interval: float = 0.2
    """Seconds between the sender thread's wakeups to frame and send."""

    close_timeout: float = 5.0
    """Seconds ``close()`` waits for acknowledgements; it returns after ~2 s when no daemon
    is connected at all."""

    all_ranks: bool = False
    """Report from every rank, not only RANK 0."""

    probe_batch: int | None = None
    """The probe's batch size, stored with each sharpness estimate."""

    grad_scaler: Any = None
    """The AMP ``GradScaler``. Its loss scale is recorded with each step (after that step's
    ``update()``), and a ``mon.step`` without an optimizer step before it (inf/NaN
    gradients, so the scaler skipped it) becomes a ``skipped_step`` event. Gradient norms,
    taken at the end of backward, are divided by the scale in force."""

    hook_grad_norm: bool = True
    """Whether edgewatch measures the gradient norm itself, at the end of backward, before
    any clipping (``client/gradnorm.py``). Turn it off where that norm is not the global one
    (FSDP shards) and pass ``mon.step(loss, grad_norm=...)`` with the norm you have."""

    step_signals: bool = False
    """After each optimizer step, the update norm and, for Adam-type optimizers, the
    gradient over Adam's second-moment estimate (``client/signals.py``), from the
    optimizer's state, without a sync. Off by default: a few passes over the optimizer
    state cost ~3% of a small transformer's CPU step (``make bench-client``), and neither
    signal added to the forecast on the instability benchmark; the daemon's precursors that
    read them are off too."""

    critical_sharpness: bool = False
    """Also spend 30% of the curvature budget on the forward-only critical sharpness along
    the last update (``client/curvature.py``); off by default: on the instability benchmark
    it added nothing to the forecast."""

    server_key: str | None = None
    """CURVE, for a daemon that requires it: the daemon's public certificate
    (``server.key``, from ``edgewatch keygen``). Needs ``client_key`` too."""

    client_key: str | None = None
    """CURVE: this client's secret certificate (``NAME.key_secret``, from ``edgewatch
    keygen``); the daemon must list this client's ``NAME.key`` in its ``curve_clients``
    folder. Needs ``server_key`` too."""

    spool_dir: str | None = None
    """A folder for the disk spool (default ``$EDGEWATCH_SPOOL_DIR``, else none). Frames the
    daemon has not acknowledged within 2 s while it is unreachable, or past
    ``max_buffered``, go to an append-only file there (``client/spool.py``) and are sent once
    it answers; what is left at exit is sent by the next ``attach`` with the same folder."""

    spool_max_bytes: int = 1 << 30
    """Bound on the spool's size; past it, frames are dropped and counted."""

    preflight: Any = None
    """The job's ``edgewatch.preflight`` report, sent with the job start and shown by the
    daemon (``/api/jobs/{id}``, the job page)."""

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> AttachOptions:
        """The options from ``attach``'s keywords; an unknown one is named, with the list."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(
                f"attach() got unknown option(s) {', '.join(unknown)}; the options are: "
                f"{', '.join(sorted(known))} (see edgewatch.client.AttachOptions)"
            )
        return cls(**options)

    def __post_init__(self) -> None:
        _whole(self.max_buffered, "max_buffered", 1, "records held in memory")
        _whole(self.spool_max_bytes, "spool_max_bytes", 0, "bytes")
        if self.probe_batch is not None:
            _whole(self.probe_batch, "probe_batch", 1, "the probe's batch size, or None")
        _seconds(self.flush_interval, "flush_interval", positive=True)
        _seconds(self.close_timeout, "close_timeout", positive=False)
        for name in ("all_ranks", "hook_grad_norm", "step_signals", "critical_sharpness"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("server_key", "client_key", "spool_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a path as a str (or None), got {value!r}")
        if (self.server_key is None) != (self.client_key is None):
            raise ValueError(
                "CURVE needs both server_key (the daemon's NAME.key) and client_key "
                "(this client's NAME.key_secret); pass both or neither"
            )
        if self.preflight is not None and not hasattr(self.preflight, "to_record"):
            raise TypeError(
                "preflight must be the report edgewatch.preflight(...) returned, got "
                f"{type(self.preflight).__name__}"
            )


def _whole(value: object, name: str, least: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name} must be a whole number >= {least} ({what}), got {value!r}")


def _seconds(value: object, name: str, *, positive: bool) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not (value > 0 if positive else value >= 0) or value == float("inf"):  # type: ignore[operator]
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")


class OptionKeywords(TypedDict, total=False):
    """``attach(**options)``'s keywords: the fields of :class:`AttachOptions`."""

    max_buffered: int
    flush_interval: float
    close_timeout: float
    all_ranks: bool
    probe_batch: int | None
    grad_scaler: Any
    hook_grad_norm: bool
    step_signals: bool
    critical_sharpness: bool
    server_key: str | None
    client_key: str | None
    spool_dir: str | None
    spool_max_bytes: int
    preflight: Any
