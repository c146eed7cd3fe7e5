"""Run identity: a seeded re-run is a new run, stored in full; a (job, run) clash from
another process is refused loudly; attaching draws nothing from the user's RNGs."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch
from conftest import metric

import edgewatch
from edgewatch.client import monitor as client_monitor
from edgewatch.server import Daemon
from edgewatch_testkit.toy import loss_at, run_toy

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
