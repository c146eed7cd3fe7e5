"""A client of the daemon's read-only HTTP JSON API (``/api/...``), for the command line,
the plots and the demo. Standard library only: it runs where the daemon's extras are not
installed."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from edgewatch.errors import ApiError

DEFAULT_SERVER = "http://127.0.0.1:9108"


def api_get(server: str, path: str, timeout: float = 5.0) -> Any:
    """GET ``server`` + ``path`` and decode its JSON; ApiError with what to do when the
    daemon is unreachable or answers with an error."""
    url = server.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:  # an HTTPError holds the response open until closed
            try:
                message = json.load(exc).get("error", exc.reason)
            except ValueError:
                message = exc.reason
        raise ApiError(f"{url}: {exc.code} {message}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiError(
            f"cannot reach the edgewatch daemon at {server} ({reason}); is `edgewatch serve` "
            "running? Point --server (or EDGEWATCH_SERVER) at its HTTP address."
        ) from exc


def job_path(job: str, what: str = "") -> str:
    """``/api/jobs/{job}`` (the job id quoted), or one of its lists (``what``: ``steps``,
    ``sharpness``, ``alerts``)."""
    path = f"/api/jobs/{urllib.parse.quote(job, safe='')}"
    return f"{path}/{what}" if what else path


def jobs(server: str) -> list[dict[str, Any]]:
    """Every job the daemon knows (``GET /api/jobs``)."""
    found: list[dict[str, Any]] = api_get(server, "/api/jobs")
    return found


def job(server: str, job_id: str) -> dict[str, Any]:
    """One job with its optimizer, schedule and current analysis."""
    found: dict[str, Any] = api_get(server, job_path(job_id))
    return found


def job_list(server: str, job_id: str, what: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """One of a job's lists, in step order: ``steps``, ``sharpness`` or ``alerts``."""
    found: list[dict[str, Any]] = api_get(server, job_path(job_id, what), timeout=timeout)
    return found
