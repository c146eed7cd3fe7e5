"""Chaos: 8 training clients stream 1,000,000 steps in all while the daemon is killed
with SIGKILL at random moments and restarted. Afterwards the database holds every step
exactly once, and every client exited 0 with nothing left unacknowledged."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy
from test_daemon_process import start_daemon

from edgewatch_testkit import child_env
from edgewatch_testkit.net import free_port

CLIENTS = 8
STEPS = 125_000  # per client: 1,000,000 in all
KILLS = 3

CLIENT = """
import sys
from edgewatch_testkit.toy import run_toy
mon = run_toy({job!r}, {endpoint!r}, {steps}, close_timeout=180)
stats = mon.stats
print(stats, flush=True)
sys.exit(0 if stats["unacknowledged"] == stats["dropped"] == stats["rejected"] == 0 else 3)
"""


def test_sigkilled_daemon_loses_no_acknowledged_step_and_stores_none_twice(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path / 'chaos.db'}"
    port, http_port = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    log = tmp_path / "daemon.log"
    daemon = start_daemon(db, port, http_port, log)
    clients = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLIENT.format(job=f"chaos-{i}", endpoint=endpoint, steps=STEPS),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )
        for i in range(CLIENTS)
    ]
    rng = random.Random(7)
    kills = 0
    try:
        while kills < KILLS and any(c.poll() is None for c in clients):
            time.sleep(rng.uniform(1.0, 4.0))
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(10)
            kills += 1
            time.sleep(rng.uniform(0.0, 1.0))  # down for a moment: clients hold their frames
            daemon = start_daemon(db, port, http_port, log)
        outputs = [c.communicate(timeout=600)[0].decode() for c in clients]
    finally:
        for c in clients:
            c.kill() if c.poll() is None else None
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(15)
    assert kills == KILLS, "the clients finished before the daemon was killed enough times"
    for i, c in enumerate(clients):
        assert c.returncode == 0, f"client {i}: {outputs[i]}"
    engine = sqlalchemy.create_engine(db)
    with engine.connect() as conn:
        rows = conn.execute(
            sqlalchemy.text(
                "SELECT j.job_id, count(*), count(DISTINCT s.step), min(s.step), max(s.step) "
                "FROM steps s JOIN jobs j ON j.pk = s.job_pk GROUP BY j.job_id ORDER BY j.job_id"
            )
        ).all()
    engine.dispose()
    assert len(rows) == CLIENTS
    for (job, count, distinct, first, last), output in zip(rows, outputs, strict=True):
        assert (count, distinct, first, last) == (STEPS, STEPS, 0, STEPS - 1), (job, output)
