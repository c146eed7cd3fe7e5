"""The database schema by Alembic (server/upgrade.py, server/migrations/): a database
written before migrations opens, upgrades and serves; an empty one is made at head and
matches tables.py; daemons started together on one empty PostgreSQL all serve."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import DaemonFactory, free_port, http_json
from toy import run_toy

from edgewatch.server.process import spawn_daemon, wait_healthy
from edgewatch.server.tables import Base
from edgewatch.server.upgrade import BASE_REVISION, head_revision, upgrade

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
