"""A client of the daemon's read-only HTTP JSON API (``/api/...``), for the command line,
the plots and the demo. The answers decode into the views the daemon encodes
(``schemas/views.py``); the standard library and msgspec, nothing of the daemon's."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import msgspec

from edgewatch.errors import ApiError
from edgewatch.schemas import views

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


def job_path(job: str, what: str = "", **query: int | None) -> str:
    """``/api/jobs/{job}`` (the job id quoted), or one of its lists (``what``: ``steps``,
    ``sharpness``, ``alerts``), with the ``query`` parameters that are not None
    (``start``, ``limit``, ``run``: one run of a job attached more than once)."""
    path = f"/api/jobs/{urllib.parse.quote(job, safe='')}"
    path = f"{path}/{what}" if what else path
    given = {name: value for name, value in query.items() if value is not None}
    return f"{path}?{urllib.parse.urlencode(given)}" if given else path


def jobs(server: str) -> list[views.Job]:
    """Every job the daemon knows (``GET /api/jobs``)."""
    return msgspec.convert(api_get(server, "/api/jobs"), list[views.Job])


def job(server: str, job_id: str) -> views.Job:
    """One job with its optimizer, schedule, current analysis and curvature spent."""
    return msgspec.convert(api_get(server, job_path(job_id)), views.Job)


def alerts(server: str, job_id: str, run: int | None = None) -> list[views.Alert]:
    """The job's forecast state changes (of one ``run``, else of every run), in the
    order they were raised."""
    return msgspec.convert(api_get(server, job_path(job_id, "alerts", run=run)), list[views.Alert])


def job_list(
    server: str, job_id: str, what: str, timeout: float = 5.0, run: int | None = None
) -> list[dict[str, Any]]:
    """One of a job's table lists, in step order: ``steps`` or ``sharpness`` (rows of
    the stored columns, as dicts), of one ``run`` or else of every run."""
    found: list[dict[str, Any]] = api_get(server, job_path(job_id, what, run=run), timeout=timeout)
    return found
