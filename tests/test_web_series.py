"""What the web page reads, over real HTTP from a daemon fed by a real client: the chart
series (the stored rows, or the min and max of each bucket), the LR plan ahead, and the
page's own files."""

from __future__ import annotations

import gzip
import json
import math
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import torch
from conftest import DaemonFactory

import edgewatch
from edgewatch.server import Daemon
from edgewatch_testkit.net import http_json
from edgewatch_testkit.toy import (
    PEAK_LR,
    WARMUP,
    grad_at,
    loss_at,
    lr_at,
    run_toy,
    warmup_past_the_edge,
)


def series(daemon: Daemon, job: str, **query: Any) -> Any:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return http_json(f"{daemon.http_url}/api/jobs/{job}/series?{q}")


def last_step(daemon: Daemon, job: str) -> int | None:
    """The job's last stored step; None while the daemon does not know the job yet."""
    try:
        step: int | None = http_json(f"{daemon.http_url}/api/jobs/{job}")["last_step"]
    except urllib.error.HTTPError as error:
        with error:
            if error.code == 404:
                return None
            raise
    return step


def pairs(table: dict[str, Any], column: str) -> list[tuple[int, int, float, float]]:
    """A downsampled column as (first step, last step, first value, second value)."""
    x, y = table["step"], table[column]
    return [(x[i], x[i + 1], y[i], y[i + 1]) for i in range(0, len(x), 2)]


def assert_min_max_of_stored(table: dict[str, Any], column: str, value_at: Any) -> None:
    """Every bucket holds exactly the min and max of the stored values of its steps, and
    the buckets cover the stored steps once each."""
    covered: list[int] = []
    for lo, hi, a, b in pairs(table, column):
        values = [value_at(s) for s in range(lo, hi + 1)]
        assert sorted([a, b]) == [min(values), max(values)], (lo, hi)
        covered += range(lo, hi + 1)
    assert covered == sorted(set(covered))
    assert len(covered) == table["rows"]


def test_a_short_job_comes_as_its_stored_rows(daemon: Daemon) -> None:
    run_toy("short", daemon.endpoint, 300)
    s = series(daemon, "short")
    steps = s["steps"]
    assert (steps["downsampled"], steps["rows"], s["first_step"], s["last_step"]) == (
        False,
        300,
        0,
        299,
    )
    assert steps["step"] == list(range(300))
    assert steps["lr"] == [lr_at(i) for i in range(300)]
    assert steps["loss"] == [loss_at(i) for i in range(300)]
    assert steps["grad_norm"] == pytest.approx([2.0 * grad_at(i) for i in range(300)])
    assert steps["stability_threshold"] == pytest.approx([2 / lr_at(i) for i in range(300)])
    assert s["sharpness"]["step"] == [] and s["sharpness"]["rows"] == 0


@pytest.mark.parametrize("points", [5, 50, 1300], ids=["from-blocks", "group-by", "from-rows"])
def test_a_long_job_comes_as_the_min_and_max_of_each_bucket(daemon: Daemon, points: int) -> None:
    """Three ways to the buckets (blocks, a GROUP BY over the rows, the rows themselves),
    one answer: the min and max of the stored values of each bucket's steps."""
    run_toy("long", daemon.endpoint, 3000)
    steps = series(daemon, "long", points=points)["steps"]
    assert steps["downsampled"] is True and steps["rows"] == 3000
    assert points // 2 <= steps["buckets"] <= points
    assert len(steps["step"]) == 2 * steps["buckets"]
    assert_min_max_of_stored(steps, "lr", lr_at)
    assert_min_max_of_stored(steps, "loss", loss_at)
    assert_min_max_of_stored(steps, "stability_threshold", lambda i: 2 / lr_at(i))


def test_a_range_is_served_in_detail_and_errors_say_why(daemon: Daemon) -> None:
    run_toy("ranged", daemon.endpoint, 3000)
    s = series(daemon, "ranged", start=1000, end=1099, points=100)
    assert s["steps"]["downsampled"] is False
    assert s["steps"]["step"] == list(range(1000, 1100))
    assert (s["start"], s["end"], s["first_step"], s["last_step"]) == (1000, 1099, 0, 2999)
    only = series(daemon, "ranged", tables="sharpness")
    assert "sharpness" in only and "steps" not in only
    for query, message in [
        ("points=0", "points must be"),
        ("tables=weights", "tables must be"),
        ("start=x", "must be an integer"),
    ]:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{daemon.http_url}/api/jobs/ranged/series?{query}", timeout=5)
        with info.value as error:
            assert error.code == 400 and message in json.load(error)["error"]


def test_records_sent_later_and_a_second_run_reach_the_series(daemon: Daemon) -> None:
    param = torch.zeros(4, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=0.01)
    mon = edgewatch.attach(optimizer, job="growing", endpoint=daemon.endpoint)

    def train(steps: range) -> None:
        for _ in steps:
            param.grad = torch.ones(4)
            optimizer.step()
            mon.step(torch.tensor(1.0))

    def wait_for_step(step: int) -> None:
        deadline = time.monotonic() + 20
        while last_step(daemon, "growing") != step:
            assert time.monotonic() < deadline, f"step {step} never arrived"
            time.sleep(0.05)

    # The client ships steps 64 at a time (or after 0.5 s, at the next step).
    train(range(128))
    wait_for_step(127)
    assert series(daemon, "growing")["steps"]["rows"] == 128  # the summary is built here
    train(range(128, 704))
    wait_for_step(703)
    grown = series(daemon, "growing")["steps"]
    assert grown["step"] == list(range(704))
    assert series(daemon, "growing", points=10)["steps"]["rows"] == 704
    mon.close()
    run_toy("growing", daemon.endpoint, 50)  # a new run of the same job: steps 0..49 again
    both = series(daemon, "growing")["steps"]
    assert both["rows"] == 754 and both["step"] == sorted([*range(704), *range(50)])


@pytest.fixture(scope="module")
def warmup_job(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A daemon holding the toy warmup past the edge: sharpness, a plan and alerts."""
    from edgewatch.server import Settings

    db = tmp_path_factory.mktemp("warmup") / "edgewatch.db"
    settings = Settings(db=f"sqlite:///{db}", bind="tcp://127.0.0.1:*", http="127.0.0.1:0")
    with Daemon(settings) as daemon:
        warmup_past_the_edge("warmup", daemon.endpoint)
        yield daemon


def test_sharpness_series_has_threshold_and_ratio(warmup_job: Daemon) -> None:
    stored = http_json(warmup_job.http_url + "/api/jobs/warmup/sharpness")
    raw = series(warmup_job, "warmup")["sharpness"]
    assert raw["downsampled"] is False and raw["step"] == [r["step"] for r in stored]
    assert raw["value"] == [r["value"] for r in stored]
    assert raw["stability_threshold"] == pytest.approx([r["stability_threshold"] for r in stored])
    assert raw["stability_ratio"] == pytest.approx([r["stability_ratio"] for r in stored])
    by_step = {r["step"]: r for r in stored}
    cut = series(warmup_job, "warmup", points=4)["sharpness"]
    assert cut["downsampled"] is True and cut["rows"] == len(stored)
    for column in ("value", "stability_threshold", "stability_ratio"):
        for lo, hi, a, b in pairs(cut, column):
            values = [r[column] for s, r in by_step.items() if lo <= s <= hi]
            assert sorted([a, b]) == pytest.approx([min(values), max(values)]), column


def test_the_plan_ahead_follows_the_scheduler(warmup_job: Daemon) -> None:
    job = http_json(warmup_job.http_url + "/api/jobs/warmup")
    plan = http_json(warmup_job.http_url + "/api/jobs/warmup/plan")
    assert plan["source"] == "LambdaLR" and plan["steps"][0] <= job["last_step"]
    curve = plan["curve"]
    assert curve["step"][0] == job["last_step"] and curve["step"][-1] == plan["steps"][-1]
    assert curve["step"] == sorted(set(curve["step"]))
    for step, lr, threshold in zip(
        curve["step"], curve["lr"], curve["stability_threshold"], strict=True
    ):
        # LambdaLR(min(1, (s + 1) / WARMUP)) was stepped once before the plan's first step
        assert lr == pytest.approx(PEAK_LR * min(1.0, (step + 1) / WARMUP), rel=2e-3)
        assert threshold == pytest.approx(2 / lr)


def test_a_job_without_a_plan_has_none(daemon: Daemon) -> None:
    run_toy("unplanned", daemon.endpoint, 10)
    assert http_json(daemon.http_url + "/api/jobs/unplanned/plan") is None


def fetch(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def test_the_page_files_come_from_the_package(daemon: Daemon) -> None:
    base = daemon.http_url
    status, headers, body = fetch(base + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="/static/jobs.js"' in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    status, headers, body = fetch(base + "/jobs/any%2Fjob")
    assert status == 200 and b"/static/job.js" in body
    status, headers, body = fetch(base + "/static/job.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    status, _, body = fetch(base + "/static/vendor/uPlot.iife.min.js")
    assert status == 200, "uPlot is missing: reinstall (pip install -e .) to fetch it"
    assert b"uPlot" in body and len(body) > 20_000
    status, headers, zipped = fetch(
        base + "/static/vendor/uPlot.iife.min.js", **{"Accept-Encoding": "gzip"}
    )
    assert headers["Content-Encoding"] == "gzip" and gzip.decompress(zipped) == body
    for path in ("/static/../../store.py", "/static/%2e%2e/http.py", "/static/nothing.js", "/jobs"):
        assert fetch(base + path)[0] == 404, path


def test_old_endpoints_answer_as_before(daemon: Daemon) -> None:
    """The API the CLI and scripts use is not compressed, whatever the client accepts."""
    run_toy("plain", daemon.endpoint, 5)
    status, headers, body = fetch(
        daemon.http_url + "/api/jobs/plain/steps", **{"Accept-Encoding": "gzip"}
    )
    assert status == 200 and "Content-Encoding" not in headers
    assert [r["step"] for r in json.loads(body)] == list(range(5))
    assert math.isfinite(json.loads(body)[0]["lr"])


def test_summaries_are_bounded(make_daemon: DaemonFactory) -> None:
    """The cache drops the least recently used job's summary past its bound, and builds
    it again when asked."""
    daemon = make_daemon()
    daemon.http.ctx.series.max_blocks = 3  # type: ignore[attr-defined]
    for job in ("a", "b"):
        run_toy(job, daemon.endpoint, 600)  # 3 blocks each
        assert series(daemon, job)["steps"]["rows"] == 600
    cached = daemon.http.ctx.series._jobs  # type: ignore[attr-defined]
    assert len(cached) == 1
    assert series(daemon, "a")["steps"]["rows"] == 600
