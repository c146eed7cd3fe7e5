"""Helpers shared by the two benchmark packages (``bench.perf``, ``bench.instability``):
machine description, a daemon in its own process, a throwaway PostgreSQL database."""

from __future__ import annotations

import datetime
import os
import platform
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy

from edgewatch.server.process import spawn_daemon, wait_healthy
from edgewatch_testkit.net import free_port

OUT = Path(__file__).resolve().parent / "out"  # bench/out/: reports and saved runs

PG_ADMIN_URL = os.environ.get(
    "EDGEWATCH_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()}"
    )


def header(title: str, command: str) -> str:
    today = datetime.date.today().isoformat()
    return f"### {title}\n\n{today} · {machine()} · `{command}`\n"


DAEMON_PIDS: list[int] = []  # of the daemons daemon_process started, newest last


def peak_rss_mb(pid: int) -> float:
    """A live process's peak resident memory (VmHWM), in MB; NaN where /proc is absent."""
    try:
        with open(f"/proc/{pid}/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return float("nan")


@contextmanager
def daemon_process(db_url: str, **flags: str) -> Iterator[tuple[str, str]]:
    """``edgewatch serve`` in its own process; yields (zmq endpoint, http url)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    http_port = free_port()
    args: tuple[str, ...] = ("--log-level", "WARNING")
    for key, value in flags.items():
        args += (f"--{key.replace('_', '-')}", value)
    proc = spawn_daemon(db_url, endpoint, f"127.0.0.1:{http_port}", args=args)
    DAEMON_PIDS.append(proc.pid)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_healthy(url, proc)
        yield endpoint, url
    finally:
        proc.terminate()
        proc.wait(30)


@contextmanager
def postgres_database() -> Iterator[str | None]:
    """A throwaway PostgreSQL database, or None when no server is reachable."""
    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"edgewatch_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        print(f"(PostgreSQL skipped: {PG_ADMIN_URL} not reachable: {type(exc).__name__})")
        yield None
        return
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
