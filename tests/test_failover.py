"""Clients fail over: with ``endpoint=[a, b]`` a run whose daemon stops for good goes on
with the next one. Both daemons write one database, as DESIGN.md's scaling-out has them
(several daemons, one database, a job talking to one daemon at a time): there, "nothing
acknowledged lost, nothing stored twice" is one query. (With a database each, a frame the
first daemon committed but could not acknowledge is rightly sent to the second too, and
lands in both: no test of the property.)"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
import torch

import edgewatch
from edgewatch.client.arguments import endpoint_list
from edgewatch.server.process import spawn_daemon, wait_healthy
from edgewatch_testkit.net import free_port

STEPS = 600


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> Any:
    loss = torch.nn.functional.mse_loss(model(x), x[:, :1])
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    optimizer.zero_grad()
    return loss


def _watched(job: str, endpoints: list[str]) -> tuple[Any, Any, torch.Tensor, Any]:
    """A tiny model, its optimizer and batch, and a monitor sending to ``endpoints``."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = edgewatch.attach(optimizer, model=model, job=job, endpoint=endpoints, close_timeout=30.0)
    assert mon.sender is not None
    mon.sender.resend_after = 1.0  # the default 5 s would only make the tests slower
    return model, optimizer, torch.randn(8, 4), mon


def _rows(url: str, job: str) -> list[tuple[int, int]]:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return [
                (row[0], row[1])
                for row in conn.execute(
                    sqlalchemy.text(
                        "SELECT steps.step, count(*) FROM steps JOIN jobs ON jobs.pk = "
                        "steps.job_pk WHERE jobs.job_id = :job GROUP BY steps.step"
                    ),
                    {"job": job},
                )
            ]
    finally:
        engine.dispose()


def test_a_run_whose_daemon_stops_goes_on_with_the_next_and_stores_each_step_once(
    make_daemon: Any, sqlite_url: str
) -> None:
    first, second = make_daemon(), make_daemon()  # one SQLite file
    model, optimizer, x, mon = _watched("failover", [first.endpoint, second.endpoint])
    for _ in range(STEPS // 2):
        mon.step(_step(model, optimizer, x))
    deadline = time.monotonic() + 20
    while mon.stats["acknowledged"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mon.stats["endpoint"] == first.endpoint and mon.stats["acknowledged"]
    first.stop()  # for good, mid-run
    for _ in range(STEPS // 2):
        mon.step(_step(model, optimizer, x))
        time.sleep(0.005)  # the run goes on for seconds after its daemon stopped
    mon.close()
    stats = mon.stats
    assert stats["endpoint"] == second.endpoint and stats["failovers"] == 1
    assert stats["unacknowledged"] == 0 and stats["dropped"] == 0
    assert stats["acknowledged"] == stats["records"]
    rows = _rows(sqlite_url, "failover")
    assert sorted(step for step, _ in rows) == list(range(STEPS))  # every step ...
    assert all(count == 1 for _, count in rows)  # ... once


def test_endpoints_come_as_a_list_or_a_comma_separated_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDGEWATCH_ENDPOINT", "tcp://a:5555, tcp://b:5555")
    assert endpoint_list(None) == ["tcp://a:5555", "tcp://b:5555"]
    assert endpoint_list(["tcp://c:1"]) == ["tcp://c:1"]
    assert endpoint_list("tcp://d:1") == ["tcp://d:1"]
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="ZeroMQ endpoint"):
        edgewatch.attach(optimizer, job="x", endpoint=["tcp://a:1", "a:2"])
    with pytest.raises(ValueError, match="twice"):
        edgewatch.attach(optimizer, job="x", endpoint=["tcp://a:1", "tcp://a:1"])


def test_a_daemon_slow_at_close_is_tried_again_after_a_dead_one(
    tmp_path: Path, sqlite_url: str
) -> None:
    """close() with the live daemon frozen for a while and a dead endpoint beside it: the
    client moves to the dead one, then back to the one that answered during the run once
    it answers again, and every record is acknowledged and stored once."""
    endpoint, http = f"tcp://127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    dead = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    with open(tmp_path / "serve.log", "wb") as out:
        live = spawn_daemon(sqlite_url, endpoint, http, stdout=out)
        try:
            wait_healthy(f"http://{http}", live)
            model, optimizer, x, mon = _watched("slow-at-close", [endpoint, dead])
            for _ in range(STEPS // 2):
                mon.step(_step(model, optimizer, x))
            deadline = time.monotonic() + 20
            while mon.stats["acknowledged"] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            live.send_signal(signal.SIGSTOP)  # busy: no answer for a while
            for _ in range(STEPS // 2):
                mon.step(_step(model, optimizer, x))
            resume = threading.Timer(2.5, live.send_signal, (signal.SIGCONT,))
            resume.start()  # after the client has given the dead endpoint its turn
            mon.close()
            resume.join()
            stats = mon.stats
            assert stats["failovers"] >= 2, stats  # to the dead one, and back
            assert stats["unacknowledged"] == 0 and stats["acknowledged"] == stats["records"]
        finally:
            live.send_signal(signal.SIGCONT)
            live.terminate()
            live.wait(timeout=30)
    rows = _rows(sqlite_url, "slow-at-close")
    assert sorted(step for step, _ in rows) == list(range(STEPS))
    assert all(count == 1 for _, count in rows)
