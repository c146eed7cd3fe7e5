"""The job page tells the truth about a diverged job, in a real browser (headless Chromium)
against a real daemon: the loss axis keeps the range before the divergence readable and
marks what ran off it, sparse sharpness estimates are not joined into a trend, the ratio
each alert was raised on is drawn, and the page says how many estimates the budget bought.

The job is written as wire records through the daemon's socket, so that every value (the
spike, the divergence, the estimates' steps) is known in advance.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgewatch.schemas import (
    JobEnd,
    JobStart,
    OptimizerInfo,
    Sharpness,
    Step,
)
from edgewatch.server import Daemon, Settings
from edgewatch_testkit.browser import Browser, why_no_browser
from edgewatch_testkit.net import http_json, send_frames

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(why_no_browser() is not None, reason=str(why_no_browser())),
]

JOB = "diverged-raw"
STEPS = 600
LR = 0.1  # SGD: threshold 2/lr = 20
SPIKE = range(250, 255)  # a loss spike 5x its trend, long before the divergence
SPIKE_FACTOR = 5.0
DIVERGES = 560  # from here the loss grows 10^1.3x a step ...
NAN_FROM = 585  # ... and is NaN from here on
RUNAWAY_FROM = 562  # the first loss past 1000x its running minimum (398x at 561)
# Dense estimates (10 steps apart), a gap of 370 steps, dense again towards the edge.
EARLY = [100, 110, 120, 130, 140, 150]
LATE = [520, 530, 540, 550]
SHARPNESS = {s: 4.0 + 0.01 * (s - 100) for s in EARLY} | {
    520: 16.0,
    530: 18.0,
    540: 20.0,
    550: 22.0,
}
CHARTS_READY = "window.edgewatch && window.edgewatch.charts().length === 5"


def trend(i: int) -> float:
    return 0.5 + 2.0 * math.exp(-i / 80)


def loss_at(i: int) -> float:
    if i >= NAN_FROM:
        return math.nan
    if i >= DIVERGES:
        return trend(DIVERGES - 1) * 10 ** (1.3 * (i - DIVERGES + 1))
    return trend(i) * (SPIKE_FACTOR if i in SPIKE else 1.0)


def write_job(endpoint: str) -> None:
    """The job's records over a DEALER socket, as a client would send them."""
    now = time.time()
    records: list[Any] = [
        JobStart(
            job=JOB,
            run=7,
            seq=0,
            wall_time=now - STEPS,
            optimizer=OptimizerInfo(kind="SGD", lr=LR),
            total_steps=STEPS,
            budget=0.02,
        )
    ]
    for i in range(STEPS):
        wall = now - STEPS + i
        loss = loss_at(i)
        grad = math.nan if math.isnan(loss) else 1.0
        records.append(
            Step(
                job=JOB,
                run=7,
                seq=len(records),
                step=i,
                wall_time=wall,
                lr=LR,
                loss=loss,
                grad_norm=grad,
            )
        )
        if i in SHARPNESS:
            records.append(
                Sharpness(
                    job=JOB,
                    run=7,
                    seq=len(records),
                    step=i,
                    wall_time=wall,
                    value=SHARPNESS[i],
                    lr=LR,
                    seconds=0.1,
                )
            )
    records.append(
        JobEnd(job=JOB, run=7, seq=len(records), step=STEPS - 1, wall_time=now, status="failed")
    )
    send_frames(endpoint, records)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    db = tmp_path_factory.mktemp("truth") / "edgewatch.db"
    settings = Settings(db=f"sqlite:///{db}", bind="tcp://127.0.0.1:*", http="127.0.0.1:0")
    with Daemon(settings) as daemon:
        write_job(daemon.endpoint)
        deadline = time.monotonic() + 20
        while api(daemon, f"/api/jobs/{JOB}")["status"] != "failed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield daemon


@pytest.fixture(scope="module")
def page(site: Daemon) -> Iterator[Browser]:
    with Browser(1280, 1100) as b:
        b.goto(f"{site.http_url}/jobs/{JOB}")
        b.wait_for(CHARTS_READY)
        b.wait_for("window.edgewatch.charts()[0].series[0].points > 0")
        time.sleep(0.3)  # one more poll: the page as it stays
        yield b


def api(site: Daemon, path: str) -> Any:
    return http_json(site.http_url + path)


def chart(page: Browser, chart_id: str) -> dict[str, Any]:
    charts: list[dict[str, Any]] = page.evaluate("window.edgewatch.charts()")
    return next(c for c in charts if c["chart"] == chart_id)


def test_the_job_api_says_what_the_budget_bought(site: Daemon) -> None:
    job = api(site, f"/api/jobs/{JOB}")
    assert job["estimates"] == len(SHARPNESS)
    assert job["curvature_seconds"] == pytest.approx(0.1 * len(SHARPNESS))
    assert job["budget"] == 0.02
    assert job["settle_steps"] is None  # SGD: no settle period
    assert job["analysis"]["state"] == "diverged"


def test_a_diverged_loss_keeps_the_range_before_it_readable(
    page: Browser, site: Daemon, tmp_path: Path
) -> None:
    loss = chart(page, "loss")
    running_min = min(loss_at(i) for i in range(NAN_FROM))
    assert loss["log"] is True
    low, high = loss["y"]
    assert high < 1e6 * running_min
    assert low <= running_min
    # The spike before the divergence: tens of pixels above its trend, not a flat line.
    height = page.evaluate("window.edgewatch.plot('loss').over.clientHeight")
    spike = max(SPIKE)
    rise = math.log10(loss_at(spike) / trend(spike)) / math.log10(high / low) * height
    assert rise > 25
    # The loss as uPlot holds it: every finite loss still has its point, none above the
    # axis; each step off the scale (past 1000x the running minimum, or NaN) has a marker.
    held = page.evaluate(
        "(() => { const u = window.edgewatch.plot('loss'); "
        "return {x: u.data[0], loss: u.data[1].map(v => v ?? null), "
        "off: u.data[2].map(v => v ?? null), top: u.scales.y.max}; })()"
    )
    assert sum(v is not None for v in held["loss"]) == NAN_FROM
    assert max(v for v in held["loss"] if v is not None) <= held["top"]
    marked = [x for x, v in zip(held["x"], held["off"], strict=True) if v is not None]
    assert marked == list(range(RUNAWAY_FROM, STEPS))
    note = page.evaluate("document.querySelector('[data-chart=loss] .chart-note').innerText")
    assert f"{STEPS - RUNAWAY_FROM} steps off the scale" in note
    assert f"step {RUNAWAY_FROM}" in note
    page.screenshot(tmp_path / "diverged.png")
    assert page.errors() == []


# The pixels a chart drew in one column of its plot, as [r, g, b] per row.
COLUMN = """((id, step) => {
  const u = window.edgewatch.plot(id);
  const x = Math.round(u.valToPos(step, 'x', true));
  const top = Math.round(u.bbox.top), h = Math.round(u.bbox.height);
  const px = u.ctx.getImageData(x, top, 1, h).data;
  const out = [];
  for (let i = 0; i < h; i++) out.push([px[4 * i], px[4 * i + 1], px[4 * i + 2]]);
  return out;
})"""


def drawn_in(page: Browser, chart_id: str, step: float, rgb: tuple[int, int, int]) -> bool:
    """Whether the chart drew a pixel of this colour in the column at ``step``."""
    column = page.evaluate(f"{COLUMN}({chart_id!r}, {step})")
    return any(sum(abs(a - b) for a, b in zip(p, rgb, strict=True)) < 60 for p in column)


@pytest.mark.parametrize(
    ("chart_id", "rgb"), [("sharpness", (220, 38, 38)), ("ratio", (234, 88, 12))]
)
def test_estimates_are_not_joined_across_a_gap(
    page: Browser, chart_id: str, rgb: tuple[int, int, int]
) -> None:
    assert chart(page, chart_id)["series"][0]["points"] == len(SHARPNESS)
    # Between two close estimates the line is drawn; across the 370-step gap it is not.
    assert drawn_in(page, chart_id, 125, rgb)
    assert drawn_in(page, chart_id, 535, rgb)
    for step in (200, 335, 470):
        assert not drawn_in(page, chart_id, step, rgb), step
    assert page.errors() == []


def test_each_alerts_own_ratio_is_drawn_on_the_ratio_chart(page: Browser, site: Daemon) -> None:
    alerts = [a for a in api(site, f"/api/jobs/{JOB}/alerts") if a["stability_ratio"]]
    assert alerts  # the forecast raised at least one alert on a ratio
    held = page.evaluate(
        "(() => { const u = window.edgewatch.plot('ratio'); "
        "return {label: u.series[2].label, x: u.data[0], y: u.data[2].map(v => v ?? null)}; })()"
    )
    assert held["label"].startswith("alert ratio")
    drawn = [(x, y) for x, y in zip(held["x"], held["y"], strict=True) if y is not None]
    assert drawn == [(a["step"], pytest.approx(a["stability_ratio"])) for a in alerts]
    # ... inside the chart's y range, where a person sees them.
    low, high = chart(page, "ratio")["y"]
    visible = [y for _, y in drawn if low <= y <= high]
    assert visible
    assert page.errors() == []


def test_the_page_says_how_many_estimates_and_why_so_few(page: Browser) -> None:
    line = page.evaluate("document.getElementById('curvature').innerText")
    assert line.startswith(f"{len(SHARPNESS)} sharpness estimates by step {STEPS - 1}")
    assert "budget 2% of training time" in line
    assert "paced to stay within the budget" in line
    assert "budget=" in line and "edgewatch.attach" in line and "EdgewatchCallback" in line
    assert "Adam" not in line  # SGD: no settle period to explain
    assert page.errors() == []


def test_an_adam_job_says_its_forecast_ignores_the_settle_period(site: Daemon) -> None:
    job = "adam-one-estimate"
    optimizer = OptimizerInfo(kind="AdamW", lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    now = time.time()
    records: list[Any] = [
        JobStart(job=job, run=7, seq=0, wall_time=now - 100, optimizer=optimizer, budget=0.02)
    ]
    for i in range(100):
        records.append(
            Step(job=job, run=7, seq=len(records), step=i, wall_time=now - 100 + i, lr=1e-3)
        )
    records.append(
        Sharpness(job=job, run=7, seq=len(records), step=60, wall_time=now, value=50.0, lr=1e-3)
    )
    send_frames(site.endpoint, records)
    deadline = time.monotonic() + 20
    while api(site, f"/api/jobs/{job}")["estimates"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert api(site, f"/api/jobs/{job}")["settle_steps"] == 50  # the forecast's default
    with Browser(1280, 900) as b:
        b.goto(f"{site.http_url}/jobs/{job}")
        line = b.wait_for(
            "(t => t.includes('estimate') && t)(document.getElementById('curvature').innerText)"
        )
        assert line.startswith("1 sharpness estimate by step 99")
        assert "Adam-type optimizers: the forecast ignores estimates before step 50" in line
        assert "budget=" in line
        assert b.errors() == []


def test_a_running_jobs_forecast_crossing_is_drawn_on_the_ratio_chart(site: Daemon) -> None:
    job = "approaching-raw"
    now = time.time()
    records: list[Any] = [
        JobStart(
            job=job, run=7, seq=0, wall_time=now - 600, optimizer=OptimizerInfo(kind="SGD", lr=LR)
        )
    ]
    for i in range(556):
        wall = now - 600 + i
        records.append(
            Step(job=job, run=7, seq=len(records), step=i, wall_time=wall, lr=LR, loss=trend(i))
        )
        if i in SHARPNESS:
            records.append(
                Sharpness(
                    job=job, run=7, seq=len(records), step=i, wall_time=wall, value=SHARPNESS[i]
                )
            )
    send_frames(site.endpoint, records)
    deadline = time.monotonic() + 20
    while api(site, f"/api/jobs/{job}")["last_step"] != 555:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    analysis = api(site, f"/api/jobs/{job}")["analysis"]
    assert analysis["steps_to_instability"] > 0
    crossing = 555 + analysis["steps_to_instability"]
    with Browser(1280, 900) as b:
        b.goto(f"{site.http_url}/jobs/{job}")
        b.wait_for(CHARTS_READY)
        b.wait_for("window.edgewatch.charts()[4].series[2].points > 0")
        held = b.evaluate(
            "(() => { const u = window.edgewatch.plot('ratio'); return {label: u.series[3].label, "
            "x: u.data[0], y: u.data[3].map(v => v ?? null), view: [u.scales.x.min, "
            "u.scales.x.max], y_range: [u.scales.y.min, u.scales.y.max]}; })()"
        )
        assert held["label"] == "forecast crossing"
        drawn = [(x, y) for x, y in zip(held["x"], held["y"], strict=True) if y is not None]
        assert drawn == [(crossing, pytest.approx(analysis["alarm_ratio"]))]
        assert held["view"][0] <= crossing <= held["view"][1]
        assert held["y_range"][0] <= analysis["alarm_ratio"] <= held["y_range"][1]
        lines = b.evaluate(
            "[...document.querySelectorAll('[data-chart=ratio] .vline.crossing')]"
            ".map(l => Number(l.dataset.step))"
        )
        assert lines == [crossing]
        assert b.errors() == []
