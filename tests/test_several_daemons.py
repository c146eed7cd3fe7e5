"""Several daemons on one PostgreSQL (DESIGN.md, "Scaling out"): clients with both
endpoints, one daemon SIGKILLed mid-run and not restarted. Every step is stored once, the
survivor takes each job over and continues its analysis, the alerts are those a replay of
the stored records raises (none lost, none twice), and the survivor's /metrics shows each
job once.

Scaled to the test suite's budget: 4 clients x 10,000 steps; EDGEWATCH_FULL_SCALE=1 runs
it at 8 clients x 25,000 steps (200,000 in all, a few minutes on 2 cores). The leases are
shortened to 2 s so that the takeover happens in-test."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy

from edgewatch.server.process import spawn_daemon, wait_healthy
from edgewatch.server.replay import replay_stored
from edgewatch.server.store import Store
from edgewatch_testkit import child_env
from edgewatch_testkit.net import free_port

FULL_SCALE = os.environ.get("EDGEWATCH_FULL_SCALE") == "1"
CLIENTS, STEPS = (8, 25_000) if FULL_SCALE else (4, 10_000)
WAIT = 3.0 if FULL_SCALE else 1.0  # the deadlines below, scaled with the run
LEASE = ("--lease-seconds", "2", "--checkpoint-seconds", "1")

CLIENT = """
import sys
from edgewatch_testkit.toy import run_spiky
# resend_after: fail over within the test, not after the default 5 s. The pauses make a
# run of seconds, so that a daemon dies in the middle of it.
mon = run_spiky(sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), pause=0.05,
                resend_after=3.0)
stats = mon.stats
print(stats, flush=True)
sys.exit(0 if stats["unacknowledged"] == stats["dropped"] == stats["rejected"] == 0 else 3)
"""


def _metrics(http: str) -> str:
    with urllib.request.urlopen(http + "/metrics", timeout=10) as response:
        return str(response.read().decode())


def _series(text: str, name: str) -> Counter[str]:
    """How many times each job_id appears in one metric's samples."""
    return Counter(re.findall(rf'^{name}{{job_id="([^"]+)"', text, flags=re.M))


def _sample(text: str, name: str, **labels: str) -> float | None:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}{{{re.escape(inner)}}} (\S+)$", text, flags=re.M)
    return None if found is None else float(found.group(1))


def _stored(engine: sqlalchemy.Engine) -> dict[str, tuple[int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sqlalchemy.text(
                "SELECT j.job_id, count(*), count(DISTINCT s.step) FROM steps s "
                "JOIN jobs j ON j.pk = s.job_pk GROUP BY j.job_id"
            )
        ).all()
    return {job: (count, distinct) for job, count, distinct in rows}


@pytest.mark.postgres
def test_two_daemons_one_killed_the_survivor_takes_every_job_over(
    postgres_url: str, tmp_path: Path
) -> None:
    ports = [(free_port(), free_port()) for _ in range(2)]
    endpoints = [f"tcp://127.0.0.1:{z}" for z, _ in ports]
    https = [f"http://127.0.0.1:{h}" for _, h in ports]
    logs = [(tmp_path / f"daemon-{i}.log").open("wb") for i in range(2)]
    daemons = [
        spawn_daemon(postgres_url, e, f"127.0.0.1:{h}", args=LEASE, stdout=log)
        for e, (_, h), log in zip(endpoints, ports, logs, strict=True)
    ]
    for daemon, http in zip(daemons, https, strict=True):
        wait_healthy(http, daemon, timeout=60)
    jobs = [f"job-{i}" for i in range(CLIENTS)]
    steps_arg = str(STEPS)
    clients = [
        subprocess.Popen(
            # Half start on the daemon to be killed, half on the survivor.
            [
                sys.executable,
                "-c",
                CLIENT,
                job,
                ",".join(endpoints[:: 1 if i % 2 else -1]),
                steps_arg,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )
        for i, job in enumerate(jobs)
    ]
    engine = sqlalchemy.create_engine(postgres_url)
    killed, survivor = daemons[1], https[0]  # clients with odd i start on daemons[0]
    try:
        deadline = time.monotonic() + 120 * WAIT
        while time.monotonic() < deadline:
            stored = _stored(engine)
            if len(stored) == CLIENTS and min(n for n, _ in stored.values()) >= STEPS // 5:
                break
            time.sleep(0.2)
        ended = [c.communicate()[0].decode() for c in clients if c.poll() is not None]
        assert not ended, f"runs ended before the kill: {ended}"
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        # While the runs go on, the survivor takes the dead daemon's jobs over: each
        # running job on its /metrics, once.
        deadline = time.monotonic() + 60 * WAIT
        while time.monotonic() < deadline:
            steps = _series(_metrics(survivor), "edgewatch_step")
            if set(steps) == set(jobs):
                break
            time.sleep(0.2)
        running = _metrics(survivor)
        outputs = [c.communicate(timeout=240 * WAIT)[0].decode() for c in clients]
        final = _metrics(survivor)
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.communicate()
        for d in daemons:
            if d.poll() is None:
                d.send_signal(signal.SIGTERM)
                d.wait(15)
        for log in logs:
            log.close()
        engine.dispose()
    log_text = (tmp_path / "daemon-0.log").read_text()
    for i, c in enumerate(clients):
        assert c.returncode == 0, f"client {i}: {outputs[i]}"
    assert _series(running, "edgewatch_step") == Counter(jobs), running
    assert _series(final, "edgewatch_step") == Counter(jobs)
    assert all(_sample(final, "edgewatch_step", job_id=j) == STEPS - 1 for j in jobs)
    # Every step stored once.
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        assert _stored(engine) == {job: (STEPS, STEPS) for job in jobs}
    finally:
        engine.dispose()
    # The alerts: each stored once, and exactly those a replay of the stored records
    # raises (the survivor's analysis went on where the dead daemon's checkpoint left it);
    # the survivor's counters are the replay's.
    store = Store(postgres_url)
    try:
        for job in jobs:
            replayed = replay_stored(store, job)
            assert len(replayed.alerts) >= 2 * (STEPS // 1500) - 2, job
            assert replayed.matches_live, (job, replayed.live, replayed.alerts)
            assert replayed.live is not None and len(replayed.live) == len(replayed.alerts)
            counts = Counter(a.state for a in replayed.alerts)
            for state, n in counts.items():
                got = _sample(final, "edgewatch_alerts_total", job_id=job, state=state)
                assert got == n, (job, state, got, n)
    finally:
        store.close()
    assert "analysis rebuilt from its checkpoint" in log_text, log_text[-3000:]
