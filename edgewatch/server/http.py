"""The daemon's read-only HTTP surface: ``/metrics``, ``/healthz`` and the JSON API.

    GET /metrics                         Prometheus text format
    GET /healthz                         {"status": "ok"|"degraded", "database": bool, ...}
    GET /api/jobs                        every job the daemon knows
    GET /api/jobs/{job_id}               one job, with its optimizer and analysis state
    GET /api/jobs/{job_id}/steps?start=&end=&limit=       step records in step order
    GET /api/jobs/{job_id}/sharpness?start=&end=&limit=   sharpness estimates, with the
                                                          threshold at that step's LR
    GET /api/jobs/{job_id}/alerts        one per forecast state change: step, state,
                                         steps_to_instability, recommended_lr,
                                         recommended_warmup_steps, reason, ...

Only GET and HEAD exist; anything that would change state is refused. To expose the API
beyond loopback, put it behind a reverse proxy that authenticates (README).
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from edgewatch.monitor.thresholds import threshold_for
from edgewatch.server.state import JobState, JobTable
from edgewatch.server.store import Store

log = logging.getLogger(__name__)

MAX_STEPS_PER_REQUEST = 100_000
_json = msgspec.json.Encoder()  # NaN and Inf become null: JSON has no spelling for them


class ApiContext:
    """What the handlers read; shared by every request thread."""

    def __init__(self, store: Store, jobs: JobTable, registry: CollectorRegistry) -> None:
        self.store = store
        self.jobs = jobs
        self.registry = registry
        self.started = time.time()


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _int_param(query: dict[str, list[str]], name: str, default: int | None) -> int | None:
    values = query.get(name)
    if not values or values[-1] == "":
        return default
    try:
        return int(values[-1])
    except ValueError:
        raise _BadRequest(400, f"query parameter {name!r} must be an integer") from None


def _step_json(row: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in row.items() if k not in ("job_pk",)}
    if isinstance(row.get("group_lrs"), str):
        row["group_lrs"] = msgspec.json.decode(row["group_lrs"])
    return row


class Handler(BaseHTTPRequestHandler):
    server_version = "edgewatch"
    ctx: ApiContext  # set on the subclass made by make_http_server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        try:
            status, content_type, body = self._route()
        except _BadRequest as exc:
            status, content_type, body = (
                exc.status,
                "application/json",
                _json.encode({"error": str(exc)}),
            )
        except Exception:  # a bug must cost one request, never the server
            log.exception("error serving %s", self.path)
            status, content_type, body = 500, "application/json", b'{"error": "internal error"}'
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _refuse(self) -> None:
        body = b'{"error": "the edgewatch API is read-only"}'
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _route(self) -> tuple[int, str, bytes]:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = parse_qs(url.query)
        ctx = self.ctx
        if parts == ["metrics"]:
            return 200, CONTENT_TYPE_LATEST, generate_latest(ctx.registry)
        if parts == ["healthz"]:
            db_ok = ctx.store.ping()
            body = {
                "status": "ok" if db_ok else "degraded",
                "database": db_ok,
                "jobs": len(ctx.jobs),
                "uptime_seconds": time.time() - ctx.started,
            }
            return (200 if db_ok else 503), "application/json", _json.encode(body)
        if parts[:2] == ["api", "jobs"]:
            return 200, "application/json", _json.encode(self._jobs_api(parts[2:], query))
        raise _BadRequest(404, f"no such endpoint: {url.path}")

    def _jobs_api(self, rest: list[str], query: dict[str, list[str]]) -> Any:
        ctx = self.ctx
        if not rest:
            return [s.to_api() for s in sorted(ctx.jobs.snapshot(), key=lambda s: s.job_id)]
        state = ctx.jobs.get(rest[0])
        if state is None:
            raise _BadRequest(404, f"unknown job {rest[0]!r}; GET /api/jobs lists the known ones")
        if len(rest) == 1:
            return state.to_api()
        if rest[1:] in (["steps"], ["sharpness"]):
            limit = _int_param(query, "limit", MAX_STEPS_PER_REQUEST)
            if limit is None or not 0 < limit <= MAX_STEPS_PER_REQUEST:
                raise _BadRequest(400, f"limit must be in 1..{MAX_STEPS_PER_REQUEST}")
            start, end = _int_param(query, "start", None), _int_param(query, "end", None)
            if rest[1] == "steps":
                return [_step_json(r) for r in ctx.store.steps(state.pk, start, end, limit)]
            return _sharpness_json(state, ctx.store.sharpness(state.pk, start, end, limit))
        if rest[1:] == ["alerts"]:
            return [_alert_json(r) for r in ctx.store.alerts(state.pk)]
        raise _BadRequest(404, f"no such endpoint under job {rest[0]!r}: {'/'.join(rest[1:])}")


def _alert_json(row: dict[str, Any]) -> dict[str, Any]:
    """An alerts row as DESIGN.md's alert object (steps_to_instability null: none forecast)."""
    return {
        "step": row["step"],
        "state": row["state"],
        "steps_to_instability": row["steps_to_instability"],
        "steps_low": row["steps_low"],
        "steps_high": row["steps_high"],
        "stability_ratio": row["ratio"],
        "recommended_lr": row["recommended_lr"],
        "recommended_warmup_steps": row["recommended_warmup_steps"],
        "reason": row["reason"],
        "run": row["run"],
        "wall_time": row["wall_time"],
    }


def _sharpness_json(state: JobState, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each estimate with the threshold at the LR it was taken at, and the ratio."""
    out = []
    for row in rows:
        row = {k: v for k, v in row.items() if k != "job_pk"}
        lr = row.get("lr")
        threshold = threshold_for(state.optimizer, lr) if lr else None
        row["stability_threshold"] = threshold
        row["stability_ratio"] = row["value"] / threshold if threshold else None
        out.append(row)
    return out


def make_http_server(host: str, port: int, ctx: ApiContext) -> ThreadingHTTPServer:
    handler = type("EdgewatchHandler", (Handler,), {"ctx": ctx})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="edgewatch-http", daemon=True)
    thread.start()
    return thread
