"""What a person or Prometheus reads: /metrics, /healthz, the JSON API, the CLI."""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edgewatch.cli import main
from edgewatch.server import Daemon
from edgewatch_testkit.net import free_port, http_json
from edgewatch_testkit.toy import loss_at, lr_at, run_toy


@pytest.fixture
def served(daemon: Daemon) -> Daemon:
    run_toy("api-job", daemon.endpoint, 120)
    run_toy("other/job with space", daemon.endpoint, 5)
    return daemon


def test_jobs_api_lists_every_job(served: Daemon) -> None:
    jobs = http_json(served.http_url + "/api/jobs")
    assert [j["job_id"] for j in jobs] == ["api-job", "other/job with space"]
    job = jobs[0]
    assert (job["status"], job["last_step"], job["records"]) == ("finished", 119, 120)
    assert {"last_seen", "optimizer", "stability_threshold"} <= set(job)


def test_one_job_and_its_steps_in_step_order(served: Daemon) -> None:
    job = http_json(served.http_url + "/api/jobs/api-job")
    assert job["optimizer"]["kind"] == "SGD" and job["lr"] == lr_at(119)
    steps = http_json(served.http_url + "/api/jobs/api-job/steps?start=10&end=19")
    assert [s["step"] for s in steps] == list(range(10, 20))
    assert all(s["lr"] == lr_at(s["step"]) and s["loss"] == loss_at(s["step"]) for s in steps)
    odd = http_json(served.http_url + "/api/jobs/other%2Fjob%20with%20space/steps")
    assert len(odd) == 5


def test_an_api_error_comes_over_http_as_json_with_its_status(served: Daemon) -> None:
    # Every error route is in tests/test_routes.py; this is the socket's side of one.
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(served.http_url + "/api/jobs/nope", timeout=5)
    with info.value as error:
        assert error.code == 404
        assert "unknown job 'nope'" in json.load(error)["error"]


def test_the_api_is_read_only(served: Daemon) -> None:
    request = urllib.request.Request(served.http_url + "/api/jobs", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    with info.value as error:
        assert error.code == 405


def test_healthz_and_metrics(served: Daemon) -> None:
    health = http_json(served.http_url + "/healthz")
    assert health["status"] == "ok" and health["database"] is True and health["jobs"] == 2
    with urllib.request.urlopen(served.http_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/plain")
    for name in (
        "edgewatch_step",
        "edgewatch_learning_rate",
        "edgewatch_loss",
        "edgewatch_grad_norm",
        "edgewatch_stability_threshold",
        "edgewatch_last_record_timestamp_seconds",
        "edgewatch_records_ingested_total",
        "edgewatch_messages_rejected_total",
        "edgewatch_client_records_dropped_total",
        "edgewatch_ingest_lag_seconds",
    ):
        assert f"\n{name}" in text, name
    assert 'edgewatch_step{job_id="api-job"} 119.0' in text
    assert 'edgewatch_messages_rejected_total{reason="malformed"} 0.0' in text


def test_cli_jobs_and_show(served: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "--server", served.http_url]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == [
        "JOB",
        "STATUS",
        "LAST",
        "STEP",
        "LAST",
        "LOSS",
        "RECORDS",
        "LAST",
        "SEEN",
    ]
    assert "api-job" in table and "finished" in table and "119" in table
    assert main(["show", "api-job", "--server", served.http_url, "--steps", "3"]) == 0
    shown = capsys.readouterr().out
    assert "job api-job" in shown and "SGD" in shown
    assert [line.split()[0] for line in shown.splitlines()[-3:]] == ["117", "118", "119"]
    assert main(["show", "api-job", "--server", served.http_url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["job"]["job_id"] == "api-job" and len(data["steps"]) == 10


def test_cli_says_what_to_do_when_the_daemon_is_away(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "--server", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "is `edgewatch serve` running?" in capsys.readouterr().err


def test_cli_piped_into_head_ends_quietly(daemon: Daemon) -> None:
    run_toy("long-job", daemon.endpoint, 3000)  # ~200 kB of table: more than a pipe holds
    command = [sys.executable, "-m", "edgewatch", "show", "long-job", "--steps", "3000"]
    command += ["--server", daemon.http_url]
    shown = subprocess.run(
        f"{shlex.join(command)} | head -n 1", shell=True, capture_output=True, text=True
    )
    assert shown.stdout.startswith("job long-job")
    assert shown.stderr == ""  # no BrokenPipeError traceback when head stops reading


def test_cli_unknown_job(served: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "missing", "--server", served.http_url]) == 2
    assert "unknown job 'missing'" in capsys.readouterr().err


def test_replay_of_a_database_that_is_not_there_says_so_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "edgewatch.db"
    assert main(["replay", "some-job", "--db", f"sqlite:///{missing}"]) == 2
    assert f"no database at {str(missing)!r}" in capsys.readouterr().err
    assert not missing.exists()


def test_the_daemon_logs_once_when_a_job_ends(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgewatch.server.ingest")
    run_toy("ending", daemon.endpoint, 30)
    deadline = time.monotonic() + 10
    while http_json(daemon.http_url + "/api/jobs/ending")["status"] != "finished":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ended = [r.getMessage() for r in caplog.records if "ended run" in r.getMessage()]
    assert len(ended) == 1, ended
    assert ended[0].startswith("job 'ending' ended run ") and "finished at step 29" in ended[0]
