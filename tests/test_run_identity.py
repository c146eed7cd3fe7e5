"""Run identity: a seeded re-run is a new run, stored in full; a (job, run) clash from
another process is refused loudly; attaching draws nothing from the user's RNGs."""

from __future__ import annotations

import json
import logging
import random
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from conftest import metric

import edgewatch
from edgewatch.cli import main
from edgewatch.client import monitor as client_monitor
from edgewatch.server import Daemon
from edgewatch_testkit.net import http_json
from edgewatch_testkit.toy import loss_at, run_toy, warmup_past_the_edge

STEPS = 300


def _job_pk(daemon: Daemon, job: str) -> int:
    return next(row["pk"] for row in daemon.store.jobs() if row["job_id"] == job)


def test_two_runs_of_one_job_under_one_seed_are_both_stored_in_full(daemon: Daemon) -> None:
    runs = []
    for _ in range(2):
        random.seed(0)  # what transformers.set_seed(0) does, among others
        mon = run_toy("seeded", daemon.endpoint, STEPS)
        assert mon.stats["acknowledged"] == mon.stats["records"]
        runs.append(mon.run)
    assert runs[0] != runs[1]
    steps = daemon.store.steps(_job_pk(daemon, "seeded"))
    by_run = {run: [s["step"] for s in steps if s["run"] == run] for run in runs}
    assert by_run[runs[0]] == list(range(STEPS))
    assert by_run[runs[1]] == list(range(STEPS))
    assert [s["loss"] for s in steps if s["run"] == runs[1]] == [loss_at(i) for i in range(STEPS)]


def test_the_api_gives_one_run_of_a_job_attached_twice(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job name used again holds both runs; ``?run=`` reads one of them back (steps,
    sharpness, alerts), and a run the job does not hold is a 404 naming the current one."""
    runs, lasts = [], []
    for _ in range(2):  # each run crosses the edge: estimates and alerts in both
        _, last, mon = warmup_past_the_edge("again", daemon.endpoint)
        runs.append(mon.run)
        lasts.append(last)
    base = f"{daemon.http_url}/api/jobs/again"
    assert len(http_json(base + "/steps")) == lasts[0] + lasts[1] + 2  # both, by step
    for run, last in zip(runs, lasts, strict=True):
        steps = http_json(f"{base}/steps?run={run}")
        assert [s["step"] for s in steps] == list(range(last + 1))
        assert {s["run"] for s in steps} == {run}
        sharpness = http_json(f"{base}/sharpness?run={run}")
        alerts = http_json(f"{base}/alerts?run={run}")
        assert sharpness and {e["run"] for e in sharpness} == {run}
        assert alerts and {a["run"] for a in alerts} == {run}
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{base}/steps?run={max(runs) + 1}", timeout=5)
    with info.value as error:
        assert error.code == 404 and f"current run is {runs[1]}" in json.load(error)["error"]
    # `edgewatch show` lists the current run's last steps, not both runs' interleaved.
    capsys.readouterr()
    assert main(["show", "again", "--server", daemon.http_url, "--json", "--steps", "5"]) == 0
    shown = json.loads(capsys.readouterr().out)["steps"]
    assert [s["step"] for s in shown] == list(range(lasts[1] - 4, lasts[1] + 1))
    assert {s["run"] for s in shown} == {runs[1]}


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_attaching_draws_nothing_from_the_users_generators(daemon: Daemon) -> None:
    def seed() -> None:
        random.seed(0)
        np.random.seed(0)
        torch.manual_seed(0)

    seed()
    without = _draws()
    seed()
    param = torch.zeros(2, requires_grad=True)
    mon = edgewatch.attach(
        torch.optim.SGD([param], lr=0.1), job="rng", endpoint=daemon.endpoint, close_timeout=5
    )
    with_edgewatch = _draws()
    mon.close()
    assert with_edgewatch == without


def test_a_clashing_run_from_another_process_is_refused_and_the_first_kept(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first = run_toy("clash", daemon.endpoint, STEPS)
    # A run id drawn twice (here by force; from the OS it takes 2**31 runs to be likely),
    # from a process that started later.
    monkeypatch.setattr(client_monitor.secrets, "randbits", lambda bits: first.run)
    with caplog.at_level(logging.ERROR, logger="edgewatch.client"):
        second = run_toy("clash", daemon.endpoint, 100, close_timeout=10.0)
    assert second.run == first.run
    assert second.stats["acknowledged"] == 0
    assert second.stats["rejected"] >= 1
    assert "refused run" in caplog.text and "nothing of this run is stored" in caplog.text
    assert metric(daemon, "edgewatch_messages_rejected_total", reason="run_conflict") == 1
    steps = daemon.store.steps(_job_pk(daemon, "clash"))
    assert [s["loss"] for s in steps] == [loss_at(i) for i in range(STEPS)]
    job = next(row for row in daemon.store.jobs() if row["job_id"] == "clash")
    assert job["status"] == "finished" and job["last_step"] == STEPS - 1
