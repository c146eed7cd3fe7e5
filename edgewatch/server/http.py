"""The daemon's read-only HTTP surface: ``/metrics``, ``/healthz``, the JSON API and the
web page.

    GET /                                the jobs page (web UI; pages.py)
    GET /jobs/{job_id}                   one job's page: charts, alerts, forecast, live
    GET /static/{file}                   the pages' scripts, styles and uPlot
    GET /metrics                         Prometheus text format
    GET /healthz                         {"status": "ok"|"degraded", "database": bool, ...}
    GET /api/jobs                        every job the daemon knows
    GET /api/jobs/{job_id}               one job, with its optimizer and analysis state,
                                         and what its curvature budget bought in this run:
                                         "estimates" (λ_max estimates), "curvature_seconds"
    GET /api/jobs/{job_id}/steps?start=&end=&limit=       step records in step order
    GET /api/jobs/{job_id}/sharpness?start=&end=&limit=   sharpness estimates, with the
                                                          threshold at that step's LR
    GET /api/jobs/{job_id}/alerts        one per forecast state change: step, state,
                                         steps_to_instability, recommended_lr,
                                         recommended_warmup_steps, reason, ...
    GET /api/jobs/{job_id}/series?start=&end=&points=&tables=
                                         chart columns over [start, end] (default: the
                                         whole job): {"steps": {"step": [..], "lr": [..],
                                         "loss": [..], "grad_norm": [..],
                                         "stability_threshold": [..]}, "sharpness": {"step",
                                         "value", "stability_threshold", "stability_ratio"},
                                         "first_step", "last_step", ...}; a table with more
                                         than 2 x points rows in range comes as the min and
                                         max of each of ``points`` (default 2000) buckets,
                                         two points per bucket ("downsampled": true);
                                         tables=steps or sharpness: only that one
    GET /api/jobs/{job_id}/plan          the newest LR plan of the current run and the
                                         planned LR and threshold ahead of the last step
                                         ("curve"); null when the client sent none

Only GET and HEAD exist; anything that would change state is refused. To expose the API
beyond loopback, put it behind a reverse proxy that authenticates (README).
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from edgewatch.monitor.thresholds import threshold_for
from edgewatch.server import pages
from edgewatch.server.blocks import SPECS, SeriesCache
from edgewatch.server.series import (
    DEFAULT_POINTS,
    MAX_POINTS,
    curvature_spent,
    job_plan,
    job_series,
)
from edgewatch.server.state import JobState, JobTable
from edgewatch.server.store import Store

log = logging.getLogger(__name__)

MAX_STEPS_PER_REQUEST = 100_000
WARM_MIN_STEPS = 100_000
"""Jobs this long get their chart summary built in the background (blocks.py)."""
WARM_INTERVAL = 2.0
GZIP_MIN_BYTES = 1024
_json = msgspec.json.Encoder()  # NaN and Inf become null: JSON has no spelling for them


class ApiContext:
    """What the handlers read; shared by every request thread."""

    def __init__(self, store: Store, jobs: JobTable, registry: CollectorRegistry) -> None:
        self.store = store
        self.jobs = jobs
        self.registry = registry
        self.started = time.time()
        self.series = SeriesCache(store)


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
        headers: dict[str, str] = {}
        try:
            status, content_type, body, headers = self._route()
        except _BadRequest as exc:
            status, content_type, body = (
                exc.status,
                "application/json",
                _json.encode({"error": str(exc)}),
            )
        except Exception:  # a bug must cost one request, never the server
            log.exception("error serving %s", self.path)
            status, content_type, body = 500, "application/json", b'{"error": "internal error"}'
        if headers.pop("gzip", None) and len(body) >= GZIP_MIN_BYTES:
            headers["Vary"] = "Accept-Encoding"
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                body = gzip.compress(body, compresslevel=5)
                headers["Content-Encoding"] = "gzip"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
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

    def _route(self) -> tuple[int, str, bytes, dict[str, str]]:
        """(status, content type, body, extra headers; "gzip": compress if accepted)."""
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = parse_qs(url.query)
        ctx = self.ctx
        if parts == ["metrics"]:
            return 200, CONTENT_TYPE_LATEST, generate_latest(ctx.registry), {}
        if parts == ["healthz"]:
            db_ok = ctx.store.ping()
            body = {
                "status": "ok" if db_ok else "degraded",
                "database": db_ok,
                "jobs": len(ctx.jobs),
                "uptime_seconds": time.time() - ctx.started,
            }
            return (200 if db_ok else 503), "application/json", _json.encode(body), {}
        if parts[:2] == ["api", "jobs"]:
            answer = _json.encode(self._jobs_api(parts[2:], query))
            # The page's chart data is compressed for a browser that asks (the older
            # endpoints answer as they always have).
            return (
                200,
                "application/json",
                answer,
                {"gzip": "yes"} if parts[3:] == ["series"] else {},
            )
        try:
            web = pages.page(parts)
        except pages.NotFound as exc:
            raise _BadRequest(404, f"no such file: {exc}") from None
        if web is not None:
            content_type, page_body, headers = web
            return 200, content_type, page_body, {**headers, "gzip": "yes"}
        raise _BadRequest(404, f"no such endpoint: {url.path}")

    def _jobs_api(self, rest: list[str], query: dict[str, list[str]]) -> Any:
        ctx = self.ctx
        if not rest:
            return [s.to_api() for s in sorted(ctx.jobs.snapshot(), key=lambda s: s.job_id)]
        state = ctx.jobs.get(rest[0])
        if state is None:
            raise _BadRequest(404, f"unknown job {rest[0]!r}; GET /api/jobs lists the known ones")
        if len(rest) == 1:
            return state.to_api() | curvature_spent(ctx.store, state)
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
        if rest[1:] == ["series"]:
            points = _int_param(query, "points", DEFAULT_POINTS)
            if points is None or not 1 <= points <= MAX_POINTS:
                raise _BadRequest(400, f"points must be in 1..{MAX_POINTS}")
            start, end = _int_param(query, "start", None), _int_param(query, "end", None)
            tables = tuple(query.get("tables", [",".join(SPECS)])[-1].split(","))
            if not tables or not set(tables) <= set(SPECS):
                raise _BadRequest(
                    400, f"tables must be a comma-separated list of {', '.join(SPECS)}"
                )
            return job_series(ctx.store, ctx.series, state, start, end, points, tables)
        if rest[1:] == ["plan"]:
            return job_plan(ctx.store, state)
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
        "resume_step": row.get("resume_step"),
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


class EdgewatchHTTPServer(ThreadingHTTPServer):
    """The HTTP server, and the thread that keeps long jobs' chart summaries built (so
    that their page loads at once); ``server_close`` stops both."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], ctx: ApiContext) -> None:
        self.ctx = ctx
        # Before binding: a failed bind calls server_close, which reads them.
        self._closing = threading.Event()
        self._warmer: threading.Thread | None = None
        handler = type("EdgewatchHandler", (Handler,), {"ctx": ctx})
        super().__init__(address, handler)

    def start_warming(self) -> None:
        self._warmer = threading.Thread(target=self._warm, name="edgewatch-series", daemon=True)
        self._warmer.start()

    def _warm(self) -> None:
        while not self._closing.is_set():
            long_jobs = [
                s for s in self.ctx.jobs.snapshot() if (s.last_step or 0) >= WARM_MIN_STEPS
            ]
            long_jobs.sort(key=lambda s: s.last_seen, reverse=True)
            try:
                self.ctx.series.warm(((s.pk, s.records) for s in long_jobs), self._closing)
            except Exception:  # the page then builds the summary itself, more slowly
                log.exception("building chart summaries")
            self._closing.wait(WARM_INTERVAL)

    def server_close(self) -> None:
        self._closing.set()
        if self._warmer is not None:
            self._warmer.join(30)
        super().server_close()


def make_http_server(host: str, port: int, ctx: ApiContext) -> EdgewatchHTTPServer:
    pages.check_chart_library()
    return EdgewatchHTTPServer((host, port), ctx)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="edgewatch-http", daemon=True)
    thread.start()
    if isinstance(server, EdgewatchHTTPServer):
        server.start_warming()
    return thread
