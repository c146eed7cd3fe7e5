"""Retention (README, "Retention"): with ``retain`` set, raw steps older than that many
days are dropped, on PostgreSQL a day partition at a time, on SQLite those of finished
jobs; each job's block summaries and alerts stay and still serve over HTTP, and records
sent after a drop are stored and their duplicates counted exactly."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy
from conftest import DaemonFactory, metric

from edgewatch.schemas import (
    JobEnd,
    JobStart,
    OptimizerInfo,
    Sharpness,
    Step,
)
from edgewatch.server import Daemon
from edgewatch.server.counters import DaemonCounters
from edgewatch.server.retention import Retention
from edgewatch_testkit.net import http_json, send_frames

DAY = 86_400
LR = 0.1  # SGD: the threshold is 2/LR = 20
STEPS = 1000


def loss_at(i: int) -> float:
    return 2.0 / (1 + i / 100) + (5.0 if i >= 900 else 0.0)  # a spike at the end


def job_records(job: str, wall: float, *, steps: int = STEPS, end: bool = True) -> list[Any]:
    """A job's start, steps one second apart from ``wall``, sharpness rising past the
    threshold (alerts), and its end."""
    records: list[Any] = [
        JobStart(job=job, run=7, seq=0, wall_time=wall, optimizer=OptimizerInfo(kind="SGD", lr=LR))
    ]
    for i in range(steps):
        records.append(
            Step(
                job=job,
                run=7,
                seq=len(records),
                step=i,
                wall_time=wall + i,
                lr=LR,
                loss=loss_at(i),
                grad_norm=1.0 + i % 10,
            )
        )
        if i % 50 == 49:
            records.append(
                Sharpness(
                    job=job,
                    run=7,
                    seq=len(records),
                    step=i,
                    wall_time=wall + i,
                    value=2.0 + i * 0.03,
                    lr=LR,
                )
            )
    if end:
        records.append(JobEnd(job=job, run=7, seq=len(records), step=steps, wall_time=wall + steps))
    return records


def stored(records: Sequence[Any]) -> int:
    """How many of the records are stored rows (steps and sharpness estimates)."""
    return sum(isinstance(r, Step | Sharpness) for r in records)


def send(endpoint: str, records: Sequence[Any], per_frame: int = 100) -> tuple[int, int]:
    """Send the records as a client would, each frame able to start the job (any slice
    is a resend); (stored, duplicates) over the Acks."""
    return send_frames(endpoint, records, per_frame, restart=True)


def api(daemon: Daemon, path: str) -> Any:
    return http_json(daemon.http_url + path)


def wait_status(daemon: Daemon, job: str, status: str) -> None:
    deadline = time.monotonic() + 20
    while api(daemon, f"/api/jobs/{job}")["status"] != status:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def steps_count(url: str) -> int:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(sqlalchemy.text("SELECT count(*) FROM steps")) or 0)
    finally:
        engine.dispose()


def envelope(series: dict[str, Any], column: str) -> tuple[float, float]:
    values = [v for v in series[column] if v is not None and not math.isnan(v)]
    return min(values), max(values)


def test_dropped_steps_still_chart_from_their_blocks_and_alerts_stay(
    db_url: str, make_daemon: DaemonFactory
) -> None:
    now = time.time()
    daemon = make_daemon(db=db_url, retain=1.0)
    records = job_records("done", now)
    assert send(daemon.endpoint, records) == (stored(records), 0)
    wait_status(daemon, "done", "finished")
    before = {p: api(daemon, f"/api/jobs/done{p}") for p in ("", "/alerts")}
    assert before["/alerts"], "the sharpness rising past 2/lr raises alerts"
    full = api(daemon, "/api/jobs/done/series?points=2000")
    assert full["steps"]["downsampled"] is False and full["steps"]["rows"] == STEPS

    # Three days on, with retain = 1 day: the day of every step is past.
    dropped = daemon.retention.run(now=now + 3 * DAY)
    assert dropped.rows == STEPS
    assert steps_count(db_url) == 0
    assert metric(daemon, "edgewatch_retention_rows_dropped_total") == STEPS
    if daemon.store.engine.dialect.name == "postgresql":
        assert len(dropped.partitions) in (1, 2)  # the steps' day (and the next, past midnight)
        assert metric(daemon, "edgewatch_retention_partitions_dropped_total") == len(
            dropped.partitions
        )

    for d in (daemon, make_daemon(db=db_url)):  # this daemon, and one started afresh
        assert api(d, "/api/jobs/done/steps") == []  # the raw rows are gone
        assert api(d, "/api/jobs/done/alerts") == before["/alerts"]
        job = api(d, "/api/jobs/done")
        assert (job["status"], job["records"], job["last_step"]) == (
            "finished",
            stored(records),
            999,
        )
        for points in (5, 2000):  # a page's width, or a zoom finer than a block
            s = api(d, f"/api/jobs/done/series?points={points}")
            assert (s["first_step"], s["last_step"]) == (0, STEPS - 1)
            steps = s["steps"]
            assert steps["downsampled"] is True and steps["rows"] == STEPS
            assert envelope(steps, "loss") == envelope(full["steps"], "loss")
            assert envelope(steps, "grad_norm") == (1.0, 10.0)
            assert s["sharpness"]["rows"] == 20  # sharpness estimates are kept
        zoom = api(d, "/api/jobs/done/series?start=300&end=310")["steps"]
        # A zoom into dropped steps shows the block they were in: its first and last step.
        assert zoom["downsampled"] is True and zoom["rows"] == 251
        assert zoom["step"][0] <= 300 and zoom["step"][1] >= 310 and len(zoom["step"]) == 2


def test_sqlite_drops_old_steps_of_finished_jobs_only(make_daemon: DaemonFactory) -> None:
    now = time.time()
    daemon = make_daemon(retain=1.0)
    old = now - 10 * DAY
    send(daemon.endpoint, job_records("done", old))
    send(daemon.endpoint, job_records("silent", old, end=False))  # died without a JobEnd
    # Running: began ten days ago, still sending (its last steps are from now).
    running = job_records("running", old, end=False)
    running += [
        Step(job="running", run=7, seq=len(running) + i, step=STEPS + i, wall_time=now, lr=LR)
        for i in range(10)
    ]
    assert send(daemon.endpoint, running) == (stored(running), 0)
    wait_status(daemon, "done", "finished")

    assert daemon.retention.run().rows == 2 * STEPS
    assert api(daemon, "/api/jobs/done/steps") == []
    assert api(daemon, "/api/jobs/silent/steps") == []
    kept = api(daemon, "/api/jobs/running/steps")
    assert [s["step"] for s in kept] == list(range(STEPS + 10))
    assert api(daemon, "/api/jobs/running/series?points=5000")["steps"]["downsampled"] is False
    assert api(daemon, "/api/jobs/done/series")["steps"]["rows"] == STEPS
    assert daemon.retention.run().rows == 0  # a second pass finds nothing more

    # A resend of the running job is all duplicates; of the finished one, stored again.
    assert send(daemon.endpoint, running) == (0, stored(running))


@pytest.mark.postgres
@pytest.mark.parametrize("pg_copy", [True, False], ids=["copy", "unnest"])
def test_postgres_ingests_and_counts_duplicates_exactly_after_a_drop(
    postgres_url: str, make_daemon: DaemonFactory, pg_copy: bool
) -> None:
    now = time.time()
    daemon = make_daemon(db=postgres_url, retain=1.0, pg_copy=pg_copy)
    first = job_records("first", now)
    send(daemon.endpoint, first)
    wait_status(daemon, "first", "finished")
    daemon.retention.run(now=now + 3 * DAY)  # today's partition is dropped
    # Records of today now go to the DEFAULT partition, those of days ahead to theirs.
    for job, wall in (("today", now), ("ahead", now + 5 * DAY), ("old", now - 30 * DAY)):
        records = job_records(job, wall)
        assert send(daemon.endpoint, records) == (stored(records), 0)
        assert send(daemon.endpoint, records, per_frame=37) == (0, stored(records))
        assert [s["step"] for s in api(daemon, f"/api/jobs/{job}/steps")] == list(range(STEPS))
    assert steps_count(postgres_url) == 3 * STEPS
    # A step whose day was dropped is new to the database when it comes again (its
    # sharpness estimates were kept: duplicates).
    again = first[:101]
    assert send(daemon.endpoint, again) == (
        sum(isinstance(r, Step) for r in again),
        sum(isinstance(r, Sharpness) for r in again),
    )


@pytest.mark.postgres
def test_two_daemons_retiring_at_once_drop_each_partition_once(postgres_url: str) -> None:
    now = time.time()
    engines = [sqlalchemy.create_engine(postgres_url) for _ in range(2)]
    try:
        from edgewatch.server.store import Store

        store = Store(postgres_url)
        try:
            for job, wall in (("a", now), ("b", now - DAY), ("c", now - 40 * DAY)):
                pk = store.upsert_job(job_records(job, wall)[0])["pk"]
                rows = [
                    (pk, 7, i + 1, i, wall + i, LR, None, 1.0, 1.0, None, None, None, None)
                    for i in range(STEPS)
                ]
                with store.engine.begin() as conn:
                    store._insert["steps"](conn, rows)
        finally:
            store.close()
        retentions = [Retention(e, 1.0, DaemonCounters()) for e in engines]
        barrier, results, errors = threading.Barrier(2), [], []

        def run(r: Retention) -> None:
            try:
                barrier.wait(10)
                results.append(r.run(now=now + 3 * DAY))
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(r,)) for r in retentions]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        # Whatever the interleaving, every row is dropped once, summarised once.
        for r in retentions:
            results.append(r.run(now=now + 3 * DAY))
        assert sum(d.rows for d in results) == 3 * STEPS
        names = [n for d in results for n in d.partitions]
        assert len(names) == len(set(names))
        with engines[0].connect() as conn:
            archived = conn.scalar(sqlalchemy.text("SELECT sum(count) FROM step_blocks"))
        assert archived == 3 * STEPS and steps_count(postgres_url) == 0
    finally:
        for e in engines:
            e.dispose()
