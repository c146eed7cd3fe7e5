"""`make bench-web`: the job page of a 10^6- and a 10^7-step job, in headless Chromium.

The rows are written straight into a SQLite file through the daemon's own Store (a client
would take an hour for 10^7 steps): a warmup-then-cosine LR, a noisy falling loss, a
gradient norm, a sharpness estimate every 100 steps, an LR plan and a few alerts. Then
``edgewatch serve`` in its own process on that file, as a user would run it, and per job:

- the naive way for comparison: one min/max GROUP BY over the job's rows in SQL, per page;
- the block summary's build from cold, in this process, before the daemon starts (what
  the daemon's background thread does once per long job after it starts), and the first
  ``/series`` request after the daemon started (it waits for that build, or does it);
- ``/series`` for the whole job, and for zooms into 1% and 0.1% of it (median of 7);
- the page in Chromium: navigation start to the charts drawn (the page's own
  ``edgewatch-charts-drawn`` mark), median of 5 loads, and the bytes it fetched
  (compressed, as sent; and decoded).

Writes bench/out/web.md and prints it.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.common import OUT, daemon_process, header, peak_rss_mb
from edgewatch.schemas import JobEnd, JobStart, OptimizerInfo, Plan, Sharpness, Step
from edgewatch.server.blocks import SeriesCache
from edgewatch.server.rows import plan_row, sharpness_row, step_row
from edgewatch.server.store import FrameWrite, JobProgress, Store
from edgewatch.server.tables import StepRow
from edgewatch_testkit.browser import Browser, why_no_browser

REPORT = OUT / "web.md"
BATCH = 200_000
SHARPNESS_EVERY = 100
WIDTH = 1280  # the browser window; the page asks for one bucket per plot pixel


def lr_at(step: int, steps: int) -> float:
    warmup = steps // 50
    if step < warmup:
        return 3e-4 * (step + 1) / warmup
    return 3e-4 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))


def write_job(store: Store, job: str, steps: int) -> None:
    """``steps`` step rows (and sharpness, a plan, alerts) of one finished run."""
    run, t0 = 1, 1.8e9
    optimizer = OptimizerInfo(kind="AdamW", lr=3e-4, betas=(0.9, 0.95))
    start = JobStart(job=job, run=run, seq=0, wall_time=t0, optimizer=optimizer)
    pk = store.upsert_job(start)["pk"]
    seq = 0
    knots = sorted({0, steps // 50, *range(0, steps, max(1, steps // 64)), steps - 1})
    plan = Plan(job=job, run=run, seq=1, step=0, wall_time=t0, steps=knots,
                lrs=[lr_at(s, steps) for s in knots], source="LambdaLR")  # fmt: skip
    frame = FrameWrite(pk, plans=[plan_row(pk, plan)])
    seq = 1
    for first in range(0, steps, BATCH):
        for step in range(first, min(steps, first + BATCH)):
            seq += 1
            lr = lr_at(step, steps)
            loss = 2.0 + 8.0 / math.sqrt(1 + step / 1000) + 0.05 * math.sin(step * 0.37)
            norm = 1.0 + 0.3 * math.sin(step * 0.011)
            record = Step(job=job, run=run, seq=seq, step=step, wall_time=t0 + step * 0.05,
                          lr=lr, loss=loss, grad_norm=norm)  # fmt: skip
            frame.steps.append(step_row(pk, record))
            if step % SHARPNESS_EVERY == 0:
                seq += 1
                value = 38 / 3e-4 * 0.6 * (1 - math.exp(-step / (steps / 5)))
                estimate = Sharpness(job=job, run=run, seq=seq, step=step,
                                     wall_time=t0 + step * 0.05, value=value, preconditioned=True,
                                     matvecs=20, residual=1e-4, probe_batch=64, seconds=0.01,
                                     lr=lr)  # fmt: skip
                frame.sharpness.append(sharpness_row(pk, estimate))
        if first == 0:
            for n, (at, state) in enumerate(
                [(steps // 40, "approaching"), (steps // 30, "stable")]
            ):
                frame.alerts.append((pk, run, n + 1, at, t0 + at * 0.05, state, 200.0, 150.0,
                                     260.0, 0.9, 2.4e-4, 0, "synthetic alert", None))  # fmt: skip
        last = min(steps, first + BATCH) - 1
        progress = JobProgress(pk, t0 + last * 0.05, last, 2.0, 0)
        store.write([frame], [progress])
        frame = FrameWrite(pk)
    end = JobEnd(job=job, run=run, seq=seq + 1, step=steps - 1, wall_time=t0 + steps * 0.05)
    store.write([FrameWrite(pk, end=end)], [])


def group_by_buckets(store: Store, job_pk: int, steps: int, points: int = 1200) -> int:
    """What the page would cost without summaries: min/max per bucket over every row."""
    t = StepRow.__table__
    bucket = (t.c.step * points // steps).label("bucket")
    columns = [func.min(c) for c in (t.c.lr, t.c.loss, t.c.grad_norm)]
    columns += [func.max(c) for c in (t.c.lr, t.c.loss, t.c.grad_norm)]
    query = select(bucket, func.min(t.c.step), func.max(t.c.step), *columns)
    query = query.where(t.c.job_pk == job_pk).group_by(bucket)
    with store.engine.connect() as conn:
        return len(conn.execute(query).all())


def timed_get(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        size = len(response.read())
    return time.perf_counter() - started, size


def page_load(browser: Browser, url: str) -> dict[str, float]:
    browser.goto(url, timeout=60)
    browser.wait_for("performance.getEntriesByName('edgewatch-charts-drawn').length > 0", 60)
    timing: dict[str, float] = browser.evaluate(
        "(() => { const r = performance.getEntriesByType('resource')"
        ".concat(performance.getEntriesByType('navigation'));"
        " return {drawn: performance.getEntriesByName('edgewatch-charts-drawn')[0].startTime,"
        " sent: r.reduce((a, e) => a + e.transferSize, 0),"
        " decoded: r.reduce((a, e) => a + e.decodedBodySize, 0)}; })()"
    )
    return timing


def bench_job(http: str, job: str, steps: int, browser: Browser | None) -> dict[str, Any]:
    api = f"{http}/api/jobs/{job}/series?points=1200"
    first, _ = timed_get(api)
    whole = [timed_get(api) for _ in range(7)]
    mid = steps // 2
    zoom1 = [timed_get(f"{api}&start={mid}&end={mid + steps // 100}")[0] for _ in range(7)]
    zoom01 = [timed_get(f"{api}&start={mid}&end={mid + steps // 1000}")[0] for _ in range(7)]
    out: dict[str, Any] = {
        "job": job,
        "steps": steps,
        "first": first,
        "whole": statistics.median(t for t, _ in whole),
        "json_bytes": whole[0][1],
        "zoom1": statistics.median(zoom1),
        "zoom01": statistics.median(zoom01),
    }
    if browser is not None:
        loads = [page_load(browser, f"{http}/jobs/{job}") for _ in range(5)]
        out["page_ms"] = statistics.median(load["drawn"] for load in loads)
        out["page_max_ms"] = max(load["drawn"] for load in loads)
        out["sent"] = loads[-1]["sent"]
        out["decoded"] = loads[-1]["decoded"]
        assert not browser.errors(), browser.errors()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, nargs="+", default=[1_000_000, 10_000_000])
    args = parser.parse_args()
    lines = [header("The job page of long jobs (downsampled)", "make bench-web"), ""]
    with tempfile.TemporaryDirectory(prefix="edgewatch-bench-web-") as tmp:
        db = f"sqlite:///{Path(tmp) / 'edgewatch.db'}"
        store = Store(db)
        builds = {}
        for steps in args.steps:
            started = time.perf_counter()
            write_job(store, f"long-{steps}", steps)
            print(f"wrote {steps:,} steps in {time.perf_counter() - started:.0f}s", flush=True)
        naive = {}
        for job in store.jobs():
            started = time.perf_counter()
            SeriesCache(store).summary(job["pk"], job["records"])
            builds[job["job_id"]] = time.perf_counter() - started
            started = time.perf_counter()
            group_by_buckets(store, job["pk"], job["last_step"] + 1)
            naive[job["job_id"]] = time.perf_counter() - started
        store.close()
        reason = why_no_browser()
        if reason:
            print(f"(no browser: {reason}; API timings only)")
        with daemon_process(db) as (_, http):
            results = []
            with Browser(WIDTH, 900) if reason is None else _no_browser() as browser:
                for steps in args.steps:
                    results.append(bench_job(http, f"long-{steps}", steps, browser))
                    results[-1]["build"] = builds[f"long-{steps}"]
                    results[-1]["naive"] = naive[f"long-{steps}"]
            from bench.common import DAEMON_PIDS

            rss = peak_rss_mb(DAEMON_PIDS[-1])
    lines += [
        "| job | naive GROUP BY (s) | summary build, cold (s) | first /series after start (s) "
        "| /series whole job, median (ms) | JSON (KB) "
        "| zoom 1% / 0.1% (ms) | page load to charts drawn, median / max of 5 (ms) "
        "| page bytes sent / decoded (KB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        page = f"{r['page_ms']:.0f} / {r['page_max_ms']:.0f}" if "page_ms" in r else "-"
        size = f"{r['sent'] / 1e3:.0f} / {r['decoded'] / 1e3:.0f}" if "sent" in r else "-"
        lines.append(
            f"| {r['steps']:,} steps | {r['naive']:.2f} | {r['build']:.2f} | {r['first']:.2f} "
            f"| {r['whole'] * 1e3:.0f} "
            f"| {r['json_bytes'] / 1e3:.0f} | {r['zoom1'] * 1e3:.0f} / {r['zoom01'] * 1e3:.0f} "
            f"| {page} | {size} |"
        )
    lines += ["", f"Daemon peak RSS: {rss:.0f} MB."]
    text = "\n".join(lines) + "\n"
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(text)
    print(text)
    return 0


class _no_browser:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
