"""Checkpoints of a job's analysis (server/checkpoint.py): a daemon killed and restarted
replays only the records after the job's last checkpoint, and shows the same analysis and
alerts as before, which are those ``edgewatch replay`` finds; a checkpoint it cannot use
(unreadable, from another version, one that would run code) means a full replay, with the
same result."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from conftest import DaemonFactory
from test_daemon_process import start_daemon

from edgewatch.server.replay import replay_stored
from edgewatch.server.store import Store
from edgewatch_testkit import child_env
from edgewatch_testkit.net import free_port, http_json
from edgewatch_testkit.toy import run_spiky

STEPS = 6_000

CLIENT = """
import os
from edgewatch_testkit.toy import run_spiky
run_spiky({job!r}, {endpoint!r}, {steps}, close=False)
os._exit(0)  # no JobEnd: the job is still running when its daemon is killed
"""


def _state(http: str, job: str) -> tuple[Any, Any]:
    one = http_json(f"{http}/api/jobs/{job}")
    return (one["status"], one["last_step"], one["analysis"]), http_json(
        f"{http}/api/jobs/{job}/alerts"
    )


def test_a_killed_daemon_restarts_from_the_checkpoint_with_the_same_analysis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = f"sqlite:///{tmp_path / 'ew.db'}"
    port, http_port = free_port(), free_port()
    http, log = f"http://127.0.0.1:{http_port}", tmp_path / "daemon.log"
    monkeypatch.setenv("EDGEWATCH_CHECKPOINT_SECONDS", "0.2")
    daemon = start_daemon(db, port, http_port, log)
    script = CLIENT.format(
        job="long",
        endpoint=f"tcp://127.0.0.1:{port}",
        steps=STEPS,
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env=child_env())
    before = _state(http, "long")
    assert before[0][:2] == ("running", STEPS - 1) and len(before[1]) >= 6
    first_life = log.read_text()  # a new job: nothing was rebuilt
    assert "job 'long': analysed by this daemon" in first_life, first_life[-3000:]
    assert "analysis rebuilt" not in first_life, first_life[-3000:]
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    daemon = start_daemon(db, port, http_port, log)  # same host and endpoint: its lease
    try:
        assert _state(http, "long") == before
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(15)
    rebuilt = [line for line in log.read_text().splitlines() if "analysis rebuilt" in line]
    assert "from its checkpoint at record" in rebuilt[-1], rebuilt
    store = Store(db)
    try:
        replayed = replay_stored(store, "long")
    finally:
        store.close()
    assert replayed.matches_live and len(replayed.alerts) == len(before[1])


class _RunsCode:
    """A pickle that would run a command when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("tamper", ["garbage", "runs code", "other version", "other settings"])
def test_a_checkpoint_that_cannot_be_used_means_a_full_replay_with_the_same_result(
    make_daemon: DaemonFactory,
    sqlite_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    tamper: str,
) -> None:
    first = make_daemon()
    mon = run_spiky("job", first.endpoint, 3_200, close=False)
    before = _state(first.http_url, "job")
    first.stop()  # a clean stop writes the last checkpoint
    mon.close(timeout=0.5)
    marker = tmp_path / "ran"
    changes = {
        "garbage": "state = :blob",
        "runs code": "state = :code",
        "other version": "version = '0.0.1'",
        "other settings": None,
    }[tamper]
    engine = sqlalchemy.create_engine(sqlite_url)
    with engine.begin() as conn:
        assert conn.scalar(sqlalchemy.text("SELECT count(*) FROM checkpoints")) == 1
        if changes is not None:
            conn.execute(
                sqlalchemy.text(f"UPDATE checkpoints SET {changes}"),
                {"blob": b"\x80\x05junk", "code": pickle.dumps(_RunsCode(marker))},
            )
    engine.dispose()
    settings = {"forecast_margin": 1.7} if tamper == "other settings" else {}
    caplog.set_level(logging.INFO, logger="edgewatch.server")
    second = make_daemon(sqlite_url, **settings)
    assert "replaying in full" in caplog.text
    assert "from its first record" in caplog.text
    assert not marker.exists()
    after = _state(second.http_url, "job")
    if tamper != "other settings":  # other settings may rightly say other things
        assert after == before


RESTART_WITHOUT_SCIPY = """
import sys, time
from edgewatch.server import Daemon, Settings
from edgewatch.server import analysis
from edgewatch_testkit.net import http_json

daemon = Daemon(Settings(db={db!r}, bind="tcp://127.0.0.1:*", http="127.0.0.1:0"))
print("rebuilt before scipy.signal:", "scipy.signal" not in sys.modules)
daemon.start()
print("state:", http_json(daemon.http_url + "/api/jobs/job")["analysis"])
print("block path loaded:", analysis._block_path_loaded.wait(60))
daemon.stop()
"""


def test_a_restarted_daemon_rebuilds_and_serves_before_it_loads_scipy_signal(
    make_daemon: DaemonFactory, sqlite_url: str
) -> None:
    """scipy.signal (the forecast's block path) is over half of a daemon's start: a
    restart rebuilds a running job step by step and serves before loading it, with the
    analysis the live daemon had (here from the job's first record), and loads it once
    serving."""
    first = make_daemon()
    mon = run_spiky("job", first.endpoint, 3_200, close=False)
    before = _state(first.http_url, "job")[0]
    first.stop()
    mon.close(timeout=0.5)
    engine = sqlalchemy.create_engine(sqlite_url)
    with engine.begin() as conn:  # no checkpoint: the whole job is replayed step by step
        conn.execute(sqlalchemy.text("DELETE FROM checkpoints"))
    engine.dispose()
    child = subprocess.run(
        [sys.executable, "-c", RESTART_WITHOUT_SCIPY.format(db=sqlite_url)],
        capture_output=True, text=True, timeout=120, env=child_env(),
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    lines = child.stdout.splitlines()
    assert lines[0] == "rebuilt before scipy.signal: True", child.stdout
    assert lines[1] == f"state: {before[2]}", child.stdout
    assert lines[2] == "block path loaded: True", child.stdout


LONG_TAIL = """
import math, sys
from edgewatch.schemas import Step
from edgewatch.server import analysis

analysis.defer_block_path()
analysis.SCALAR_STEPS = 3_000
run = analysis.RunAnalysis(1, 1, {"kind": "AdamW", "lr": 1e-3, "betas": (0.9, 0.95)})
steps = [
    Step(job="j", run=1, seq=i + 1, step=i, wall_time=float(i), lr=1e-3,
         loss=2.0 + 0.1 * math.sin(i) + (3.0 if i % 1500 > 1490 else 0.0), grad_norm=1.0)
    for i in range(6_000)
]
for i in range(0, 6_000, 1_000):
    run.feed(steps[i : i + 1_000])
    print(i, "scipy.signal" in sys.modules, analysis._block_path_loaded.is_set())
print("alerts", [(a.step, a.state) for a in run.forecast.alerts])
"""


def test_a_long_tail_of_steps_loads_the_block_path_rather_than_go_on_step_by_step() -> None:
    """Deferred, the block path is still loaded once more steps have gone one at a time
    than loading it costs (a rebuild with a long tail after its checkpoint); the alerts
    are those of a run fed by the block path from the start."""
    deferred = subprocess.run(
        [sys.executable, "-c", LONG_TAIL], capture_output=True, text=True, timeout=120,
        env=child_env(),
    )  # fmt: skip
    assert deferred.returncode == 0, deferred.stderr[-3000:]
    lines = deferred.stdout.splitlines()
    assert lines[:4] == ["0 False False", "1000 False False", "2000 False False",
                         "3000 True True"], lines  # fmt: skip
    loaded = LONG_TAIL.replace("analysis.defer_block_path()", "")
    direct = subprocess.run(
        [sys.executable, "-c", loaded], capture_output=True, text=True, timeout=120,
        env=child_env(),
    )  # fmt: skip
    assert direct.stdout.splitlines()[0] == "0 True True", direct.stdout
    assert direct.stdout.splitlines()[-1] == lines[-1] != "alerts []"
