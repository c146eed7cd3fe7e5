"""What the daemon answers to a GET, as a function of its state and the URL: no socket
here (``server/http.py`` serves these answers), so every route is tested by calling
``route`` (``tests/test_routes.py``).

    GET /                                the jobs page (web UI; pages.py)
    GET /jobs/{job_id}                   one job's page: charts, alerts, forecast, live
    GET /static/{file}                   the pages' scripts, styles and uPlot
    GET /metrics                         Prometheus text format
    GET /healthz                         views.Health; 503 while the database is down
    GET /api/jobs                        every job the daemon knows (views.Job)
    GET /api/jobs/{job_id}               one job (views.Job), with its optimizer and
                                         analysis state, and what its curvature budget
                                         bought in this run: "estimates" (λ_max
                                         estimates), "curvature_seconds"
    GET /api/jobs/{job_id}/steps?start=&end=&limit=&run=  step records in step order
    GET /api/jobs/{job_id}/sharpness?start=&end=&limit=&run=
                                         sharpness estimates, with the threshold at
                                         that step's LR
    GET /api/jobs/{job_id}/alerts?run=   one per forecast state change (views.Alert)
                                         (run=: one run's only; a job re-attached under
                                         its name holds every run's; 404 for a run it
                                         does not hold)
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

Errors are ``views.Error`` with the status: 400 for a bad query parameter, 404 for an
unknown job or path.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from edgewatch.monitor.thresholds import threshold_for
from edgewatch.schemas import views
from edgewatch.server import pages
from edgewatch.server.blocks import SPECS, SeriesCache
from edgewatch.server.series import (
    DEFAULT_POINTS,
    MAX_POINTS,
    job_plan,
    job_series,
)
from edgewatch.server.state import JobState, JobTable
from edgewatch.server.store import Store

MAX_STEPS_PER_REQUEST = 100_000
JSON = "application/json"
_json = msgspec.json.Encoder()  # NaN and Inf become null: JSON has no spelling for them


class ApiContext:
    """What the routes read; shared by every request thread."""

    def __init__(self, store: Store, jobs: JobTable, registry: CollectorRegistry) -> None:
        self.store = store
        self.jobs = jobs
        self.registry = registry
        self.started = time.time()
        self.series = SeriesCache(store)


@dataclasses.dataclass(frozen=True)
class Response:
    """An answer: its status, type, body and headers; ``compress``: worth gzipping for a
    client that accepts it (the pages and the chart data)."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    compress: bool = False


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def route(ctx: ApiContext, path: str) -> Response:
    """The answer to ``GET path`` (with its query string)."""
    try:
        return _route(ctx, path)
    except BadRequest as exc:
        return Response(exc.status, JSON, _json.encode(views.Error(str(exc))))


def _route(ctx: ApiContext, path: str) -> Response:
    url = urlsplit(path)
    parts = [unquote(p) for p in url.path.split("/") if p]
    query = parse_qs(url.query)
    if parts == ["metrics"]:
        return Response(200, CONTENT_TYPE_LATEST, generate_latest(ctx.registry))
    if parts == ["healthz"]:
        db_ok = ctx.store.ping()
        health = views.Health(
            status="ok" if db_ok else "degraded",
            database=db_ok,
            jobs=len(ctx.jobs),
            uptime_seconds=time.time() - ctx.started,
        )
        return Response(200 if db_ok else 503, JSON, _json.encode(health))
    if parts[:2] == ["api", "jobs"]:
        answer = _json.encode(_jobs_api(ctx, parts[2:], query))
        # The page's chart data is compressed for a browser that asks (the older
        # endpoints answer as they always have).
        return Response(200, JSON, answer, compress=parts[3:] == ["series"])
    try:
        web = pages.page(parts)
    except pages.NotFound as exc:
        raise BadRequest(404, f"no such file: {exc}") from None
    if web is not None:
        content_type, page_body, headers = web
        return Response(200, content_type, page_body, headers, compress=True)
    raise BadRequest(404, f"no such endpoint: {url.path}")


def _int_param(query: dict[str, list[str]], name: str, default: int | None) -> int | None:
    values = query.get(name)
    if not values or values[-1] == "":
        return default
    try:
        return int(values[-1])
    except ValueError:
        raise BadRequest(400, f"query parameter {name!r} must be an integer") from None


def _run_param(ctx: ApiContext, state: JobState, query: dict[str, list[str]]) -> int | None:
    """The ``run`` asked for (None: every run), one the job holds records of."""
    run = _int_param(query, "run", None)
    if run is not None and run != state.run and not ctx.store.has_run(state.pk, run):
        current = f"its current run is {state.run}"
        raise BadRequest(404, f"job {state.job_id!r} holds no run {run}; {current}")
    return run


def _jobs_api(ctx: ApiContext, rest: list[str], query: dict[str, list[str]]) -> Any:
    if not rest:
        return [s.view() for s in sorted(ctx.jobs.snapshot(), key=lambda s: s.job_id)]
    state = ctx.jobs.get(rest[0])
    if state is None:
        raise BadRequest(404, f"unknown job {rest[0]!r}; GET /api/jobs lists the known ones")
    if len(rest) == 1:
        estimates, seconds = ctx.store.curvature_spent(state.pk, state.run)
        return msgspec.structs.replace(state.view(), estimates=estimates, curvature_seconds=seconds)
    if rest[1:] in (["steps"], ["sharpness"]):
        limit = _int_param(query, "limit", MAX_STEPS_PER_REQUEST)
        if limit is None or not 0 < limit <= MAX_STEPS_PER_REQUEST:
            raise BadRequest(400, f"limit must be in 1..{MAX_STEPS_PER_REQUEST}")
        start, end = _int_param(query, "start", None), _int_param(query, "end", None)
        run = _run_param(ctx, state, query)
        if rest[1] == "steps":
            return [_step_json(r) for r in ctx.store.steps(state.pk, start, end, limit, run)]
        return _sharpness_json(state, ctx.store.sharpness(state.pk, start, end, limit, run))
    if rest[1:] == ["alerts"]:
        run = _run_param(ctx, state, query)
        return [_alert_view(r) for r in ctx.store.alerts(state.pk, run=run)]
    if rest[1:] == ["series"]:
        points = _int_param(query, "points", DEFAULT_POINTS)
        if points is None or not 1 <= points <= MAX_POINTS:
            raise BadRequest(400, f"points must be in 1..{MAX_POINTS}")
        start, end = _int_param(query, "start", None), _int_param(query, "end", None)
        tables = tuple(query.get("tables", [",".join(SPECS)])[-1].split(","))
        if not tables or not set(tables) <= set(SPECS):
            raise BadRequest(400, f"tables must be a comma-separated list of {', '.join(SPECS)}")
        return job_series(ctx.store, ctx.series, state, start, end, points, tables)
    if rest[1:] == ["plan"]:
        return job_plan(ctx.store, state)
    raise BadRequest(404, f"no such endpoint under job {rest[0]!r}: {'/'.join(rest[1:])}")


def _step_json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "job_pk"}  # group_lrs: the JSON column's list


def _alert_view(row: dict[str, Any]) -> views.Alert:
    """An alerts row as DESIGN.md's alert object."""
    return views.Alert(
        step=row["step"],
        state=row["state"],
        steps_to_instability=views.finite(row["steps_to_instability"]),
        steps_low=views.finite(row["steps_low"]),
        steps_high=views.finite(row["steps_high"]),
        stability_ratio=views.finite(row["ratio"]),
        recommended_lr=row["recommended_lr"],
        recommended_warmup_steps=row["recommended_warmup_steps"],
        reason=row["reason"],
        resume_step=row.get("resume_step"),
        run=row["run"],
        wall_time=row["wall_time"],
    )


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
