"""The database schema by Alembic (server/upgrade.py, server/migrations/): a database
written before migrations opens, upgrades and serves; an empty one is made at head and
matches tables.py; daemons started together on one empty PostgreSQL all serve."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import DaemonFactory, metric
from test_retention import send

from edgewatch.schemas import JobEnd, JobStart, OptimizerInfo, Plan, Step
from edgewatch.server.partitions import DEFAULT, LIVE, day_name
from edgewatch.server.process import spawn_daemon, wait_healthy
from edgewatch.server.tables import Base
from edgewatch.server.upgrade import BASE_REVISION, alembic_config, head_revision, upgrade
from edgewatch_testkit.net import free_port, http_json
from edgewatch_testkit.toy import run_toy

FIXTURE = Path(__file__).parent / "fixtures" / "pre_alembic.db"


def revision(url: str) -> str | None:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def test_a_database_from_before_migrations_opens_upgrades_and_serves(
    make_daemon: DaemonFactory, tmp_path: Path
) -> None:
    path = tmp_path / "old.db"
    shutil.copy(FIXTURE, path)  # written by commit 69a82f7: tests/fixtures/make_pre_alembic_db.py
    url = f"sqlite:///{path}"
    assert revision(url) is None
    daemon = make_daemon(db=url)
    assert revision(url) == head_revision()
    base = daemon.http_url
    (job,) = http_json(base + "/api/jobs")
    assert (job["job_id"], job["status"], job["records"]) == (
        "old-job",
        "finished",
        301,
    )  # 300 steps, its plan
    steps = http_json(base + "/api/jobs/old-job/steps")
    assert [s["step"] for s in steps] == list(range(300))
    run_toy("new-job", daemon.endpoint, 500)
    assert {j["job_id"] for j in http_json(base + "/api/jobs")} == {"old-job", "new-job"}


def test_an_empty_database_is_made_at_head_matching_tables_py(tmp_path: Path) -> None:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    assert upgrade(engine) is None
    assert upgrade(engine) == head_revision()  # a second start changes nothing
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()
    assert (head_revision() or "") >= BASE_REVISION


@pytest.mark.postgres
@pytest.mark.parametrize("attempt", range(3))
def test_daemons_started_together_on_an_empty_postgresql_all_serve(
    postgres_url: str, tmp_path: Path, attempt: int
) -> None:
    ports = [(free_port(), free_port()) for _ in range(3)]
    logs = [tmp_path / f"daemon-{i}.log" for i in range(3)]
    outs = [log.open("wb") for log in logs]
    procs = [
        spawn_daemon(postgres_url, f"tcp://127.0.0.1:{z}", f"127.0.0.1:{h}", stdout=out)
        for (z, h), out in zip(ports, outs, strict=True)
    ]
    try:
        for proc, (_, h), log in zip(procs, ports, logs, strict=True):
            try:
                wait_healthy(f"http://127.0.0.1:{h}", proc, timeout=60)
            except RuntimeError as exc:
                raise AssertionError(f"{exc}\n{log.read_text()}") from None
            assert http_json(f"http://127.0.0.1:{h}/api/jobs") == []
        assert revision(postgres_url) == head_revision()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, out in zip(procs, outs, strict=True):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out.close()


@pytest.mark.postgres
@pytest.mark.parametrize("attempt", range(3))
def test_upgrades_racing_on_an_empty_postgresql_all_succeed(
    postgres_url: str, attempt: int
) -> None:
    """The processes above start seconds apart at the mercy of imports; here four upgrades
    leave a barrier together (without the advisory lock they deadlock or one dies with
    DuplicateTable, and the database is left without a revision)."""
    barrier, errors = threading.Barrier(4), []
    engines = [sqlalchemy.create_engine(postgres_url) for _ in range(4)]

    def start(engine: sqlalchemy.Engine) -> None:
        try:
            with engine.connect():
                pass  # connected before the barrier: the upgrades start together
            barrier.wait(10)
            upgrade(engine)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for e in engines:
        e.dispose()
    assert errors == []
    assert revision(postgres_url) == head_revision()


def finished_job_at(
    conn: sqlalchemy.Connection,
    revision: str,
    job: str,
    *,
    run: int,
    records: int,
    now: float,
    last_step: int | None = None,
) -> None:
    """The schema at ``revision``, and a finished SGD job (pk 1) of ``records`` records
    from host h, pid 42, as edgewatch wrote its row then."""
    config = alembic_config()
    config.attributes["connection"] = conn
    command.upgrade(config, revision)
    conn.execute(
        sqlalchemy.text(
            "INSERT INTO jobs (job_id, status, run, optimizer, rank, world_size, host, "
            "pid, client_version, torch_version, budget, started_at, ended_at, last_seen, "
            "last_step, last_loss, records, dropped) VALUES (:job, 'finished', :run, "
            "'{\"kind\": \"SGD\", \"lr\": 0.1}', 0, 1, 'h', 42, '', '', 0.02, :t, :t, :t, "
            ":last, 1.0, :records, 0)"
        ),
        {"job": job, "run": run, "t": now, "records": records,
         "last": records - 1 if last_step is None else last_step},
    )  # fmt: skip


def make_0002_database(url: str, now: float) -> None:
    """A database as edgewatch wrote it at revision 0002: a finished job of 300 steps,
    100 from today, 100 from three days ago, 100 with a clock at 1970."""
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        finished_job_at(conn, "0002", "old", run=7, records=300, now=now)
        walls = [now - 300 + i for i in range(100)]
        walls += [now - 3 * 86_400 + i for i in range(100)]
        walls += [1.0 + i for i in range(100)]
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO steps (job_pk, run, seq, step, wall_time, lr, loss, grad_norm) "
                "VALUES (1, 7, :seq, :step, :wall, 0.1, :loss, 1.0)"
            ),
            [
                {"seq": i + 1, "step": i, "wall": wall, "loss": 1.0 + i}
                for i, wall in enumerate(walls)
            ],
        )
    engine.dispose()


def test_a_database_at_0002_upgrades_its_steps_into_retention(
    db_url: str, make_daemon: DaemonFactory
) -> None:
    """Revision 0003 on a database written at 0002: every step still served; on
    PostgreSQL each moved to its day's partition (1970 to the DEFAULT one), so that
    retention drops the old days and keeps today's, on both databases."""
    now = time.time()
    make_0002_database(db_url, now)
    daemon = make_daemon(db=db_url)
    assert revision(db_url) == head_revision()
    base = daemon.http_url
    assert [s["step"] for s in http_json(base + "/api/jobs/old/steps")] == list(range(300))
    if daemon.store.engine.dialect.name == "postgresql":
        with daemon.store.engine.connect() as conn:
            q = "SELECT count(*) FROM {}"
            for table, rows in ((day_name(LIVE, int(now // 86_400)), 100), (DEFAULT, 100)):
                assert conn.scalar(sqlalchemy.text(q.format(table))) == rows
            three_days_ago = day_name(LIVE, int((now - 3 * 86_400) // 86_400))
            assert conn.scalar(sqlalchemy.text(q.format(three_days_ago))) == 100
    # A resend of stored steps is all duplicates, as before the upgrade.
    start = JobStart(
        job="old", run=7, seq=0, wall_time=now, host="h", pid=42,
        optimizer=OptimizerInfo(kind="SGD", lr=0.1),
    )  # fmt: skip
    resent = [
        Step(job="old", run=7, seq=i + 1, step=i, wall_time=wall, lr=0.1, loss=1.0 + i,
             grad_norm=1.0)
        for i, wall in ((0, now - 300), (150, now - 3 * 86_400 + 50), (299, 100.0))
    ]  # fmt: skip
    end = JobEnd(job="old", run=7, seq=301, step=300, wall_time=now)
    assert send(daemon.endpoint, [start, *resent, end]) == (0, 3)

    daemon.stop()

    # Restarted with --retain 1: its first pass drops three days ago and 1970.
    daemon = make_daemon(db=db_url, retain=1.0)
    base = daemon.http_url
    deadline = time.monotonic() + 30
    while metric(daemon, "edgewatch_retention_rows_dropped_total") != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    steps = http_json(base + "/api/jobs/old/steps")
    assert [s["step"] for s in steps] == list(range(100))
    series = http_json(base + "/api/jobs/old/series")
    assert (series["steps"]["rows"], series["first_step"], series["last_step"]) == (300, 0, 299)


def make_0003_database_with_plans(url: str, now: float) -> None:
    """A database as edgewatch wrote it at revision 0003, when an LR plan was an event
    of kind ``lr_plan``: a finished job with two plans, an event that only looks like
    one (its detail is not a plan), and a checkpoint event."""
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        finished_job_at(conn, "0003", "planned", run=3, records=104, now=now, last_step=99)
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO steps (job_pk, run, seq, step, wall_time, lr, loss, grad_norm) "
                "VALUES (1, 3, :seq, :step, :wall, 0.1, 1.0, 1.0)"
            ),
            [{"seq": i + 2, "step": i, "wall": now - 100 + i} for i in range(100)],
        )
        events = [
            (1, 0, '{"steps": [0, 100], "lrs": [0.0, 0.1], "source": "LambdaLR"}'),
            (50, 49, "not a plan"),
            (103, 99, '{"steps": [99, 1000], "lrs": [0.1, 0.01], "source": "function"}'),
        ]
        for seq, step, detail in events:
            conn.execute(
                sqlalchemy.text(
                    "INSERT INTO events (job_pk, run, seq, step, wall_time, kind, detail) "
                    "VALUES (1, 3, :seq, :step, :wall, 'lr_plan', :detail)"
                ),
                {"seq": seq, "step": step, "wall": now, "detail": detail},
            )
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO events (job_pk, run, seq, step, wall_time, kind, detail) "
                "VALUES (1, 3, 104, 99, :wall, 'checkpoint_saved', 'at step 99')"
            ),
            {"wall": now},
        )
    engine.dispose()


def test_a_database_at_0003_moves_its_lr_plans_into_their_table(
    db_url: str, make_daemon: DaemonFactory
) -> None:
    """Revision 0004 on a database written at 0003: the plans leave the events table with
    their delivery key (a resend is still a duplicate), the newest is served, and what
    was not a plan stays an event."""
    now = time.time()
    make_0003_database_with_plans(db_url, now)
    daemon = make_daemon(db=db_url)
    assert revision(db_url) == head_revision()
    plan = http_json(daemon.http_url + "/api/jobs/planned/plan")
    assert (plan["step"], plan["steps"], plan["lrs"], plan["source"]) == (
        99,
        [99, 1000],
        [0.1, 0.01],
        "function",
    )
    pk = daemon.store.jobs()[0]["pk"]
    stored = [(table, row["seq"]) for table, row in daemon.store.run_records(pk, 3)]
    assert [s for s in stored if s[0] != "steps"] == [
        ("plans", 1),
        ("events", 50),
        ("plans", 103),
        ("events", 104),
    ]
    start = JobStart(job="planned", run=3, seq=0, wall_time=now, host="h", pid=42,
                     optimizer=OptimizerInfo(kind="SGD", lr=0.1))  # fmt: skip
    resent = Plan(job="planned", run=3, seq=1, step=0, wall_time=now, steps=[0, 100],
                  lrs=[0.0, 0.1], source="LambdaLR")  # fmt: skip
    assert send(daemon.endpoint, [start, resent]) == (0, 1)
