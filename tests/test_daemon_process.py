"""``edgewatch serve`` as a real process: SIGTERM while a client streams loses nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import sqlalchemy

import edgewatch
from edgewatch.server.process import spawn_daemon, wait_healthy
from edgewatch_testkit.net import free_port, http_json
from edgewatch_testkit.toy import run_toy


def start_daemon(db: str, port: int, http_port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # a file, not a pipe nobody reads: the daemon never blocks
        proc = spawn_daemon(db, f"tcp://127.0.0.1:{port}", f"127.0.0.1:{http_port}", stdout=out)
    try:
        wait_healthy(f"http://127.0.0.1:{http_port}", proc)
    except RuntimeError as exc:
        raise AssertionError(f"{exc}\n{log.read_text()}") from None
    return proc


def test_sigterm_mid_stream_exits_zero_with_everything_acknowledged_committed(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path / 'ew.db'}"
    port, http_port = free_port(), free_port()
    log = tmp_path / "daemon.log"
    proc = start_daemon(db, port, http_port, log)
    monitors: list[edgewatch.Monitor] = []

    def train() -> None:
        monitors.append(run_toy("sigterm", f"tcp://127.0.0.1:{port}", 60_000, close_timeout=3.0))

    trainer = threading.Thread(target=train)
    trainer.start()
    # Mid-stream by condition, not by a guess of timing: once the daemon has committed
    # some steps (the client needs a while to import and connect), and long before the
    # 60,000 are through.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        jobs = http_json(f"http://127.0.0.1:{http_port}/api/jobs")
        if jobs and jobs[0]["records"] >= 1000:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    status = proc.wait(timeout=10)
    stopped_in = time.monotonic() - started
    trainer.join(60)
    output = log.read_text()
    assert status == 0, output
    assert stopped_in < 5, f"took {stopped_in:.1f}s to stop"
    assert "SIGTERM" in output
    mon = monitors[0]
    engine = sqlalchemy.create_engine(db)
    with engine.connect() as conn:
        stored = conn.scalar(sqlalchemy.text("SELECT count(*) FROM steps"))
    engine.dispose()
    # Acknowledged counts the JobStart too, which is a job row, not a step row.
    acknowledged_steps = mon.stats["acknowledged"] - 1
    assert acknowledged_steps > 0
    assert stored is not None and stored >= acknowledged_steps
    assert mon.stats["steps"] == 60_000  # training went on to the end without the daemon


def test_a_restarted_daemon_receives_what_the_client_resends(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'ew.db'}"
    port, http_port = free_port(), free_port()
    log = tmp_path / "daemon.log"
    proc = start_daemon(db, port, http_port, log)
    param = __import__("torch").zeros(2, requires_grad=True)
    optimizer = __import__("torch").optim.SGD([param], lr=0.1)
    mon = edgewatch.attach(
        optimizer, job="restart", endpoint=f"tcp://127.0.0.1:{port}", close_timeout=20
    )
    mon.sender.resend_after = 1.0  # type: ignore[union-attr]
    for i in range(200):
        param.grad = param.detach() + i
        optimizer.step()
        mon.step(float(i))
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    for i in range(200, 400):  # the daemon is down: steps wait in the client
        param.grad = param.detach() + i
        optimizer.step()
        mon.step(float(i))
    proc = start_daemon(db, port, http_port, log)
    try:
        mon.close()
        steps = http_json(f"http://127.0.0.1:{http_port}/api/jobs/restart/steps")
        assert [s["step"] for s in steps] == list(range(400))
        assert mon.stats["unacknowledged"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_a_port_in_use_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag in ("--bind", "--http"):
            value = f"tcp://127.0.0.1:{port}" if flag == "--bind" else f"127.0.0.1:{port}"
            args = [
                "--bind",
                f"tcp://127.0.0.1:{free_port()}",
                "--http",
                f"127.0.0.1:{free_port()}",
            ]
            args[args.index(flag) + 1] = value
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "edgewatch",
                    "serve",
                    "--db",
                    f"sqlite:///{tmp_path / 'x.db'}",
                    *args,
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert result.returncode == 2, result.stderr
            assert "Traceback" not in result.stderr
            assert f"Choose another {flag}" in result.stderr


def test_a_daemon_on_a_new_database_gets_the_job_start_again(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    log = tmp_path / "daemon.log"
    first = start_daemon(f"sqlite:///{tmp_path / 'old.db'}", port, http_port, log)
    param = __import__("torch").zeros(2, requires_grad=True)
    optimizer = __import__("torch").optim.SGD([param], lr=0.1)
    mon = edgewatch.attach(optimizer, job="moved", endpoint=f"tcp://127.0.0.1:{port}",
                           close_timeout=20)  # fmt: skip
    for i in range(100):
        param.grad = param.detach() + i
        optimizer.step()
        mon.step(float(i))
    deadline = time.monotonic() + 10
    while mon.stats["unacknowledged"] and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0
    # A daemon on another database: it has never heard of the job.
    second = start_daemon(f"sqlite:///{tmp_path / 'new.db'}", port, http_port, log)
    try:
        for i in range(100, 300):
            param.grad = param.detach() + i
            optimizer.step()
            mon.step(float(i))
        mon.close()
        assert mon.stats["unacknowledged"] == 0 and mon.stats["rejected"] == 0
        new = [s["step"] for s in http_json(f"http://127.0.0.1:{http_port}/api/jobs/moved/steps")]
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
        with engine.connect() as conn:
            old = list(conn.scalars(sqlalchemy.text("SELECT step FROM steps")))
        engine.dispose()
        # Every step reached one daemon or the other, once; the later ones the new one.
        assert sorted(old + new) == list(range(300)) and set(range(100, 300)) <= set(new)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=10)
