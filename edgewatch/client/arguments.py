"""What ``attach()``'s arguments are checked for, and the resources built from them
(the disk spool, the CURVE keys), before any training step: mistakes in the call are
the user's to fix now, with a message that says how."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgewatch.client.spool import Spool
from edgewatch.keys import load_keys

log = logging.getLogger("edgewatch.client")
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


def open_spool(folder: str | None, job: str, run: int, max_bytes: int) -> Spool | None:
    folder = folder or os.environ.get("EDGEWATCH_SPOOL_DIR")
    if not folder:
        return None
    try:
        return Spool(Path(folder), job, run, max_bytes)
    except OSError as exc:  # an unwritable folder: monitoring goes on without a spool
        log.warning("edgewatch: no spool in %s (%s); records stay in memory", folder, exc)
        return None


def curve_keys(server_key: str | None, client_key: str | None) -> tuple[bytes, bytes, bytes] | None:
    """CURVE keys for the sender: the daemon's public key, this client's key pair."""
    if server_key is None and client_key is None:
        return None
    if server_key is None or client_key is None:
        raise ValueError(
            "CURVE needs both server_key (the daemon's NAME.key) and client_key "
            "(this client's NAME.key_secret)"
        )
    server_public, _ = load_keys(server_key, secret=False)
    public, secret = load_keys(client_key, secret=True)
    assert secret is not None
    return server_public, public, secret


def endpoint_list(endpoint: str | Sequence[str] | None) -> list[str]:
    """The daemons to send to, in order: ``endpoint`` (one, a list, or a comma-separated
    string), else ``$EDGEWATCH_ENDPOINT`` (the same), else DEFAULT_ENDPOINT."""
    if endpoint is None or endpoint == "":
        endpoint = os.environ.get("EDGEWATCH_ENDPOINT") or DEFAULT_ENDPOINT
    if isinstance(endpoint, str):
        return [part.strip() for part in endpoint.split(",") if part.strip()]
    if not isinstance(endpoint, list | tuple):
        raise TypeError(
            "endpoint must be a ZeroMQ endpoint or a list of them, like "
            f"[{DEFAULT_ENDPOINT!r}, 'tcp://backup:5555'], got {type(endpoint).__name__}"
        )
    return list(endpoint)


def check_arguments(
    optimizer: Any, job: str, endpoints: Sequence[str], budget: float, total_steps: int | None
) -> None:
    if not hasattr(optimizer, "param_groups") or not hasattr(optimizer, "register_step_pre_hook"):
        raise TypeError(f"attach() needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not isinstance(job, str) or not job or len(job) > 200 or not job.isprintable():
        raise ValueError(f"job must be a printable name of 1..200 characters, got {job!r}")
    if not endpoints:
        raise ValueError(
            f"endpoint must name at least one ZeroMQ endpoint, like {DEFAULT_ENDPOINT}"
        )
    for endpoint in endpoints:
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ValueError(
                f"endpoint must be a ZeroMQ endpoint like {DEFAULT_ENDPOINT} (or a list of "
                f"them), got {endpoint!r}"
            )
    if len(set(endpoints)) < len(endpoints):
        raise ValueError(f"endpoint lists a daemon twice: {list(endpoints)!r}")
    if not 0 <= budget < 1:
        raise ValueError(f"budget is a share of wall time in [0, 1), got {budget!r}")
    if total_steps is not None and total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps!r}")
