"""The daemon's answers without a socket (``server/routes.py``): each JSON answer decodes
strictly into the view it is declared as (``schemas/views.py``), the same view the
command line decodes, and what comes over HTTP is what ``route`` gives.

A real daemon and a real client make the job (its ingest, its forecast); the routes are
called on its store and job table directly.
"""

from __future__ import annotations

import json
import urllib.request

import msgspec
import pytest

from edgewatch.cli import main
from edgewatch.schemas import views
from edgewatch.server import Daemon
from edgewatch.server.routes import ApiContext, route
from edgewatch_testkit.toy import run_spiky

STEPS = 3_200  # two loss spikes (at 1,490 and 2,990): alerts in and out


@pytest.fixture
def spiky(daemon: Daemon) -> ApiContext:
    mon = run_spiky("spiky", daemon.endpoint, STEPS)
    assert mon.stats["unacknowledged"] == 0
    return ApiContext(daemon.store, daemon.jobs, daemon.registry)


def answer(ctx: ApiContext, path: str, view: type[object], status: int = 200) -> object:
    found = route(ctx, path)
    assert (found.status, found.content_type) == (status, "application/json"), found.body
    return msgspec.json.decode(found.body, type=view, strict=True)


def test_every_json_answer_is_its_declared_view(spiky: ApiContext) -> None:
    health = answer(spiky, "/healthz", views.Health)
    assert health == views.Health(
        status="ok", database=True, jobs=1, uptime_seconds=health.uptime_seconds
    )
    (listed,) = answer(spiky, "/api/jobs", list[views.Job])
    job = answer(spiky, "/api/jobs/spiky", views.Job)
    assert (job.job_id, job.status, job.last_step, job.records) == (
        "spiky",
        "finished",
        STEPS - 1,
        STEPS,
    )
    assert listed == msgspec.structs.replace(job, estimates=None, curvature_seconds=None)
    assert (job.estimates, job.curvature_seconds) == (0, 0.0)  # no probe, no curvature
    alerts = answer(spiky, "/api/jobs/spiky/alerts", list[views.Alert])
    states = [(a.step, a.state) for a in alerts]
    assert len(alerts) >= 4, states  # into and out of each of the two spikes
    assert all(a.run == job.run and a.wall_time is not None for a in alerts)
    assert job.analysis.state == alerts[-1].state


def test_http_serves_what_route_answers(daemon: Daemon, spiky: ApiContext) -> None:
    for path in ("/api/jobs/spiky/alerts", "/api/jobs/spiky/steps?start=1480&end=1500"):
        with urllib.request.urlopen(daemon.http_url + path, timeout=5) as response:
            assert response.read() == route(spiky, path).body


def test_replay_json_gives_the_alerts_the_api_gives(
    daemon: Daemon, spiky: ApiContext, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    live = answer(spiky, "/api/jobs/spiky/alerts", list[views.Alert])
    assert len(live) >= 4
    assert main(["replay", "spiky", "--db", sqlite_url, "--json"]) == 0
    replayed = msgspec.convert(json.loads(capsys.readouterr().out)["alerts"], list[views.Alert])
    assert replayed == [msgspec.structs.replace(a, run=None, wall_time=None) for a in live]


@pytest.mark.parametrize(
    ("path", "status", "names"),
    [
        ("/api/jobs/nope", 404, "unknown job 'nope'"),
        ("/api/jobs/spiky/steps?limit=0", 400, "limit must be"),
        ("/api/jobs/spiky/steps?start=ten", 400, "'start' must be an integer"),
        ("/api/jobs/spiky/sharpness?end=x", 400, "'end' must be an integer"),
        ("/api/jobs/spiky/series?points=0", 400, "points must be"),
        ("/api/jobs/spiky/series?tables=losses", 400, "tables must be"),
        ("/api/jobs/spiky/everything", 404, "no such endpoint under job 'spiky'"),
        ("/nothing-here", 404, "no such endpoint"),
        ("/static/../../etc/passwd", 404, "no such"),
    ],
)
def test_a_bad_request_is_an_error_view_that_says_what_is_wrong(
    spiky: ApiContext, path: str, status: int, names: str
) -> None:
    error = answer(spiky, path, views.Error, status=status)
    assert names in error.error
