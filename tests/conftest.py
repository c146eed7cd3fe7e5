"""Shared fixtures: real daemons on free ports, real SQLite under tmp_path, and a
throwaway database on the local PostgreSQL when one is reachable. What the benchmarks
use too (free ports, the toy runs, the models) is in ``edgewatch_testkit/``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from edgewatch.server import Daemon, Settings

PG_ADMIN_URL = os.environ.get(
    "EDGEWATCH_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def metric(daemon: Daemon, name: str, **labels: str) -> float | None:
    return daemon.registry.get_sample_value(name, labels)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[sqlalchemy.Engine]:
    engine = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
    except Exception as exc:
        pytest.skip(
            f"PostgreSQL not reachable at {PG_ADMIN_URL} ({type(exc).__name__}); "
            "set EDGEWATCH_TEST_POSTGRES to a server where CREATE DATABASE is allowed"
        )
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_server: sqlalchemy.Engine) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"edgewatch_test_{uuid.uuid4().hex[:12]}"
    with postgres_server.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = postgres_server.url.set(database=name).render_as_string(hide_password=False)
    yield url
    with postgres_server.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'edgewatch.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'edgewatch.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def make_daemon(sqlite_url: str) -> Iterator[DaemonFactory]:
    """Start in-process daemons on free ports; stopped at the end of the test."""
    started: list[Daemon] = []

    def make(db: str | None = None, **settings: Any) -> Daemon:
        base = {"db": db or sqlite_url, "bind": "tcp://127.0.0.1:*", "http": "127.0.0.1:0"}
        daemon = Daemon(Settings(**(base | settings))).start()
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture
def daemon(make_daemon: DaemonFactory) -> Daemon:
    return make_daemon()
