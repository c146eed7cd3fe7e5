"""One or many real clients over real ZeroMQ sockets into a real database."""

from __future__ import annotations

import math
import threading

import sqlalchemy
from conftest import DaemonFactory, metric

from edgewatch.server import Daemon
from edgewatch_testkit.toy import expected_grad_norm, loss_at, lr_at, run_toy


def stored_steps(daemon: Daemon, job: str) -> list[tuple[int, float, float, float]]:
    state = daemon.jobs.get(job)
    assert state is not None, f"job {job!r} unknown to the daemon"
    with daemon.store.engine.connect() as conn:
        rows = conn.execute(
            sqlalchemy.text(
                "SELECT step, lr, loss, grad_norm FROM steps WHERE job_pk = :pk ORDER BY step"
            ),
            {"pk": state.pk},
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_one_client_streams_100k_steps_exactly_once(
    make_daemon: DaemonFactory, db_url: str
) -> None:
    daemon = make_daemon(db=db_url)
    mon = run_toy("big-run", daemon.endpoint, 100_000)
    assert mon.stats["unacknowledged"] == 0 and mon.stats["dropped"] == 0, mon.stats
    rows = stored_steps(daemon, "big-run")
    assert len(rows) == 100_000
    assert [r[0] for r in rows] == list(range(100_000))
    for step, lr, loss, grad_norm in rows:
        assert lr == lr_at(step)
        assert loss == loss_at(step)
        assert math.isclose(grad_norm, expected_grad_norm(step), rel_tol=1e-6)
    assert metric(daemon, "edgewatch_records_ingested_total") == 100_000
    state = daemon.jobs.get("big-run")
    assert state is not None and state.status == "finished" and state.records == 100_000


def test_concurrent_clients_keep_their_jobs_apart(daemon: Daemon) -> None:
    jobs = {f"job-{k}": 3_000 + 500 * k for k in range(4)}
    threads = [
        threading.Thread(target=run_toy, args=(job, daemon.endpoint, steps))
        for job, steps in jobs.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for job, steps in jobs.items():
        rows = stored_steps(daemon, job)
        assert [r[0] for r in rows] == list(range(steps)), job
        assert all(r[1] == lr_at(r[0]) and r[2] == loss_at(r[0]) for r in rows), job
    assert metric(daemon, "edgewatch_records_ingested_total") == sum(jobs.values())


def test_metrics_show_the_last_step_of_each_job(daemon: Daemon) -> None:
    run_toy("m1", daemon.endpoint, 250)
    assert metric(daemon, "edgewatch_step", job_id="m1") == 249
    assert metric(daemon, "edgewatch_learning_rate", job_id="m1") == lr_at(249)
    assert metric(daemon, "edgewatch_loss", job_id="m1") == loss_at(249)
    grad = metric(daemon, "edgewatch_grad_norm", job_id="m1")
    assert grad is not None and math.isclose(grad, expected_grad_norm(249), rel_tol=1e-6)
    # SGD without momentum: threshold 2/lr, and no sharpness measured, so no ratio.
    threshold = metric(daemon, "edgewatch_stability_threshold", job_id="m1")
    assert threshold is not None and math.isclose(threshold, 2 / lr_at(249))
    assert metric(daemon, "edgewatch_stability_ratio", job_id="m1") is None
    assert metric(daemon, "edgewatch_ingest_lag_seconds") is not None


def test_silent_jobs_leave_metrics_after_expiry(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon(job_expiry=0.5)
    run_toy("short", daemon.endpoint, 10)
    assert metric(daemon, "edgewatch_step", job_id="short") == 9
    import time

    time.sleep(0.8)
    assert metric(daemon, "edgewatch_step", job_id="short") is None
    assert metric(daemon, "edgewatch_jobs") == 0
    assert daemon.jobs.get("short") is not None  # still in the API and the database


def test_restarted_daemon_rebuilds_its_jobs_from_the_database(
    make_daemon: DaemonFactory, sqlite_url: str
) -> None:
    first = make_daemon(db=sqlite_url)
    run_toy("persisted", first.endpoint, 500)
    first.stop()
    second = make_daemon(db=sqlite_url)
    state = second.jobs.get("persisted")
    assert state is not None
    assert (state.records, state.last_step, state.status) == (500, 499, "finished")
