"""The web page in a real browser (headless Chromium over the DevTools protocol) against a
real daemon fed by real clients: the demo's training run (sharpness, an LR plan, alerts,
divergence), a short finished job, a long one the page downsamples, and a running one.

``EDGEWATCH_UPDATE_SCREENSHOT=1`` also writes the job page's screenshot to
docs/web-job-page.png (the README's picture).
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import edgewatch
from edgewatch.demo import train
from edgewatch.server import Daemon, Settings
from edgewatch_testkit.browser import Browser, why_no_browser
from edgewatch_testkit.net import http_json
from edgewatch_testkit.toy import run_toy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(why_no_browser() is not None, reason=str(why_no_browser())),
]

DEMO_JOB = "demo-mlp-warmup"
LONG_STEPS = 6000
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "web-job-page.png"
CHARTS_READY = "window.edgewatch && window.edgewatch.charts().length === 5"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    db = tmp_path_factory.mktemp("web") / "edgewatch.db"
    settings = Settings(db=f"sqlite:///{db}", bind="tcp://127.0.0.1:*", http="127.0.0.1:0")
    with Daemon(settings) as daemon:
        with contextlib.redirect_stdout(io.StringIO()):  # the demo narrates its steps
            train(daemon.endpoint, DEMO_JOB, 600)
        run_toy("short/finished job", daemon.endpoint, 200)
        run_toy("long", daemon.endpoint, LONG_STEPS)
        yield daemon


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser(1280, 900) as b:
        yield b


def api(site: Daemon, path: str) -> Any:
    return http_json(site.http_url + path)


def open_job(browser: Browser, site: Daemon, job: str) -> list[dict[str, Any]]:
    """Load a job's page; returns what its charts draw (charts.js ``summary``)."""
    browser.goto(f"{site.http_url}/jobs/{job.replace('/', '%2F').replace(' ', '%20')}")
    browser.wait_for(CHARTS_READY)
    browser.wait_for("window.edgewatch.charts()[0].series[0].points > 0")
    charts: list[dict[str, Any]] = browser.evaluate("window.edgewatch.charts()")
    return charts


def points(charts: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    return {(c["chart"], s["label"]): s["points"] for c in charts for s in c["series"]}


def test_jobs_page_lists_every_job_with_its_state(browser: Browser, site: Daemon) -> None:
    jobs = {j["job_id"]: j for j in api(site, "/api/jobs")}
    browser.goto(site.http_url + "/")
    browser.wait_for(f"document.querySelectorAll('#jobs tbody tr').length === {len(jobs)}")
    rows = browser.evaluate(
        "[...document.querySelectorAll('#jobs tbody tr')].map(r => "
        "({id: r.dataset.jobId, cells: [...r.cells].map(c => c.innerText)}))"
    )
    assert {r["id"] for r in rows} == set(jobs)
    for r in rows:
        job = jobs[r["id"]]
        assert r["cells"][1] == job["analysis"]["state"]
        assert r["cells"][2] == job["status"]
        assert r["cells"][3] == f"{job['last_step']:,}"
    assert jobs[DEMO_JOB]["analysis"]["state"] == "diverged"
    assert rows[0]["id"] == DEMO_JOB  # the most severe state first
    # Filter by state, then sort by step (descending on the first click).
    browser.evaluate("document.querySelector('#filter-state input[value=diverged]').click()")
    shown = browser.evaluate(
        "[...document.querySelectorAll('#jobs tbody tr')].map(r => r.dataset.jobId)"
    )
    assert DEMO_JOB not in shown and len(shown) == len(jobs) - 1
    browser.evaluate("document.querySelector('#jobs th[data-key=last_step]').click()")
    shown = browser.evaluate(
        "[...document.querySelectorAll('#jobs tbody tr')].map(r => r.dataset.jobId)"
    )
    assert shown == sorted(shown, key=lambda j: -jobs[j]["last_step"])
    browser.evaluate("document.querySelector('#show-finished').click()")
    assert browser.evaluate("document.querySelectorAll('#jobs tbody tr').length") == 0
    assert browser.errors() == []


def test_job_page_draws_every_stored_point(browser: Browser, site: Daemon) -> None:
    steps = api(site, f"/api/jobs/{DEMO_JOB}/steps")
    sharpness = api(site, f"/api/jobs/{DEMO_JOB}/sharpness")
    plan = api(site, f"/api/jobs/{DEMO_JOB}/plan")
    charts = open_job(browser, site, DEMO_JOB)
    assert [c["chart"] for c in charts] == ["loss", "lr", "grad", "sharpness", "ratio"]
    drawn = points(charts)
    finite = [s for s in steps if s["loss"] is not None]  # a NaN loss is stored as null
    assert drawn[("loss", "loss")] == len(finite)
    assert drawn[("lr", "LR")] == len(steps)
    assert drawn[("lr", "planned LR")] == len(plan["curve"]["step"]) > 0
    assert drawn[("grad", "grad norm")] == len([s for s in steps if s["grad_norm"] is not None])
    assert drawn[("sharpness", "sharpness")] == len(sharpness) > 2
    assert drawn[("sharpness", "threshold")] == len(steps)
    assert drawn[("sharpness", "planned threshold")] == len(plan["curve"]["step"])
    assert drawn[("ratio", "stability ratio")] == len(sharpness)
    # Every chart shows the same steps; the ratio chart marks 1.0 and the alarm ratio.
    assert len({tuple(c["x"]) for c in charts}) == 1
    alarm = api(site, f"/api/jobs/{DEMO_JOB}")["analysis"]["alarm_ratio"]
    levels = browser.evaluate(
        "[...document.querySelectorAll('[data-chart=ratio] .hline')]"
        ".map(l => Number(l.dataset.level))"
    )
    assert levels == [1, pytest.approx(alarm)]
    # The latest values and the forecast at the top.
    cards = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('.card')].map(c => "
        "[c.querySelector('.label').innerText, c.querySelector('.value').innerText]))"
    )
    assert cards["step"] == f"{steps[-1]['step']:,}"
    assert browser.evaluate("document.querySelector('#state').innerText") == "diverged"
    # A diverged job is told where to go back to, in the header as in its last alert.
    resume = api(site, f"/api/jobs/{DEMO_JOB}")["analysis"]["resume_step"]
    assert resume is not None and cards["resume from"] == f"checkpoint ≤ step {resume:,}"
    assert browser.errors() == []


def test_alerts_are_markers_with_state_reason_and_recommended_lr(
    browser: Browser, site: Daemon
) -> None:
    alerts = api(site, f"/api/jobs/{DEMO_JOB}/alerts")
    # Which states the demo passes through depends on when its sharpness is measured
    # (a share of wall time); it always warns with a recommendation before diverging.
    assert any(a["state"] != "stable" and a["recommended_lr"] for a in alerts)
    open_job(browser, site, DEMO_JOB)
    lines = browser.evaluate(
        "[...document.querySelectorAll('[data-chart=loss] .vline.alert-marker')]"
        ".map(m => ({step: Number(m.dataset.step), title: m.title}))"
    )
    assert [m["step"] for m in lines] == [a["step"] for a in alerts]
    for line, alert in zip(lines, alerts, strict=True):
        assert line["title"].startswith(f"step {alert['step']:,}: {alert['state']}\n")
        assert alert["reason"] in line["title"]
        if alert["recommended_lr"] is not None:
            assert "recommended: lr ≤ " in line["title"]
    flags = browser.evaluate(
        "[...document.querySelectorAll('.flags .flag.alert-marker')].map(f => "
        "({text: f.innerText, state: f.dataset.state, lr: Number(f.dataset.recommendedLr)}))"
    )
    recommended = {(a["state"], a["recommended_lr"]) for a in alerts}
    assert flags and all((f["state"], f["lr"]) in recommended for f in flags)
    assert any(f["text"].startswith(f"{f['state']} · lr ≤ ") for f in flags)
    diverged = next(a for a in alerts if a["state"] == "diverged")
    assert any(
        f["state"] == "diverged" and f"resume ≤ step {diverged['resume_step']:,}" in f["text"]
        for f in flags
    )
    table = browser.evaluate("document.querySelectorAll('#alerts tbody tr').length")
    assert table == len(alerts)
    assert browser.errors() == []


def test_a_long_job_is_downsampled_and_zoom_fetches_the_rows(
    browser: Browser, site: Daemon
) -> None:
    charts = open_job(browser, site, "long")
    data = browser.evaluate("window.edgewatch.page.data.steps")
    assert data["downsampled"] is True and data["rows"] == LONG_STEPS
    width = browser.evaluate("document.querySelector('[data-chart=loss] .u-over').clientWidth")
    assert data["buckets"] >= width // 2
    assert points(charts)[("loss", "loss")] == 2 * data["buckets"] >= data["buckets"]
    # Drag across a tenth of the loss chart: every chart zooms, the rows come in detail.
    box = browser.evaluate(
        "(() => { const r = document.querySelector('[data-chart=loss] .u-over')"
        ".getBoundingClientRect(); return {x: r.left, y: r.top, w: r.width, h: r.height}; })()"
    )
    y = box["y"] + box["h"] / 2
    browser.mouse("mouseMoved", box["x"] + 0.4 * box["w"], y)
    browser.mouse("mousePressed", box["x"] + 0.4 * box["w"], y)
    browser.mouse("mouseMoved", box["x"] + 0.5 * box["w"], y, pressed=True)
    browser.mouse("mouseReleased", box["x"] + 0.5 * box["w"], y)
    browser.wait_for("window.edgewatch.page.detail !== null")
    charts = browser.evaluate("window.edgewatch.charts()")
    lo, hi = charts[0]["x"]
    assert 0.35 * LONG_STEPS < lo < hi < 0.55 * LONG_STEPS
    assert all(c["x"] == [lo, hi] for c in charts)
    detail = browser.evaluate("window.edgewatch.page.detail.steps")
    assert detail["downsampled"] is False
    assert (
        points(charts)[("loss", "loss")]
        == detail["rows"]
        == len(range(max(0, int(lo)), min(LONG_STEPS - 1, int(hi) + 1) + 1))
    )
    # Shift+drag pans (same width), the wheel zooms, "whole job" goes back.
    browser.mouse("mousePressed", box["x"] + 0.5 * box["w"], y, modifiers=8)
    browser.mouse("mouseMoved", box["x"] + 0.3 * box["w"], y, pressed=True, modifiers=8)
    browser.mouse("mouseReleased", box["x"] + 0.3 * box["w"], y, modifiers=8)
    panned = browser.evaluate("window.edgewatch.charts()")[2]["x"]
    assert panned[0] > lo and panned[1] - panned[0] == pytest.approx(hi - lo)
    browser.mouse("mouseWheel", box["x"] + 0.5 * box["w"], y, deltaX=0, deltaY=-100)
    zoomed = browser.evaluate("window.edgewatch.charts()")[4]["x"]
    assert zoomed[1] - zoomed[0] < panned[1] - panned[0]
    browser.evaluate("document.getElementById('reset').click()")
    whole = browser.evaluate("window.edgewatch.charts()")
    assert all(c["x"] == [0, LONG_STEPS - 1] for c in whole)
    assert browser.errors() == []


def test_a_record_sent_after_load_appears_within_3_seconds(browser: Browser, site: Daemon) -> None:
    param = torch.zeros(4, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=0.05)
    with edgewatch.attach(optimizer, job="live", endpoint=site.endpoint) as mon:

        def step(loss: float) -> None:
            param.grad = torch.ones(4)
            optimizer.step()
            mon.step(torch.tensor(loss))

        for i in range(64):  # one full chunk: shipped at once
            step(2.0 - i / 100)
        deadline = time.monotonic() + 20
        while not any(
            j["job_id"] == "live" and j["last_step"] == 63 for j in api(site, "/api/jobs")
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        charts = open_job(browser, site, "live")
        assert points(charts)[("loss", "loss")] == 64
        time.sleep(0.6)  # past the client's half-second chunk: the next step ships at once
        step(1.0)
        sent = time.monotonic()
        browser.wait_for("window.edgewatch.charts()[0].series[0].points === 65", timeout=3)
        browser.wait_for(
            "[...document.querySelectorAll('.card')].some(c => "
            "c.querySelector('.label').innerText === 'step' && "
            "c.querySelector('.value').innerText === '64')",
            timeout=max(0.1, 3 - (time.monotonic() - sent)),
        )
        assert time.monotonic() - sent < 3
    assert browser.errors() == []


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_screenshot_of_the_demo_job(browser: Browser, site: Daemon, tmp_path: Path) -> None:
    open_job(browser, site, DEMO_JOB)
    time.sleep(0.3)  # one more poll: the page as it stays
    bottom = browser.evaluate("document.querySelector('#charts').getBoundingClientRect().bottom")
    shot = browser.screenshot(tmp_path / "web-job-page.png", height=bottom + 16)
    width, height = png_size(shot)
    assert width > 1200 and height > 900  # the page less its scroll bar; every chart
    if os.environ.get("EDGEWATCH_UPDATE_SCREENSHOT"):
        SCREENSHOT.write_bytes(shot.read_bytes())
    assert browser.errors() == []
