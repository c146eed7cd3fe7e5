"""Restart time against a running job's stored length: how long a daemon killed with
SIGKILL takes, once started again, to answer ``/healthz`` and to show the job's analysis
as it was before the kill, with the analysis' checkpoint (``server/checkpoint.py``) and
without it (the checkpoint row deleted: a full replay, as before checkpoints existed).

For each length N: a fresh database; ``edgewatch serve`` in its own process; one DEALER
sends a JobStart and N step records (a loss spike every 1,500 steps, so the analysis has
alerts to raise) in frames of 4096, at most 8 unacknowledged; no JobEnd, so the job is
still running. Then, for each variant, SIGKILL and start again on the same endpoint (the
same daemon name, so its leases are its own at once), and time from the spawn to the
first ``/healthz`` answer and to ``/api/jobs/JOB`` showing the analysis it showed before.
A fresh start on an empty database is timed beside it (imports, migrations, sockets).

Usage: python -m bench.perf.restart [--steps 100000,1000000,2000000] [--postgres]
       [--full-replay-max 2000000]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
import zmq

from bench.common import header, postgres_database
from edgewatch.schemas import Ack, Batch, JobStart, OptimizerInfo, Step, decode_reply, encode
from edgewatch.server.process import spawn_daemon
from edgewatch_testkit.net import free_port

FRAME = 4096
WINDOW = 8
JOB = "long-job"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _shown(job: dict[str, Any]) -> Any:
    """What must be as before: the job's status, last step and analysis."""
    return job["status"], job["last_step"], job["analysis"]


def _until(url: str, proc: subprocess.Popen[bytes], want: Any = None) -> float:
    """Seconds until ``url`` answers (showing ``want``, when given) since now."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 300:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        try:
            got = _get(url)
            if want is None or _shown(got) == want:
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} did not show {want} within 300 s")


class Daemon:
    def __init__(self, db: str, log: Path, args: tuple[str, ...] = ()) -> None:
        self.db, self.log, self.args = db, log, args
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.http_port = free_port()
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> tuple[float, float]:
        """Spawn; returns seconds to /healthz and, later, to the job's stored state."""
        with self.log.open("ab") as out:
            t0 = time.perf_counter()
            self.proc = spawn_daemon(
                self.db, self.endpoint, f"127.0.0.1:{self.http_port}", args=self.args, stdout=out
            )
        _until(self.http + "/healthz", self.proc)
        return t0, time.perf_counter() - t0

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


def records(n: int) -> Iterator[list[Step]]:
    now = time.time()
    for first in range(0, n, FRAME):
        yield [
            Step(
                job=JOB,
                run=7,
                seq=1 + i,
                step=i,
                wall_time=now + i * 1e-3,
                lr=1e-3,
                loss=5.0 if i % 1500 >= 1490 else 1.0 + 0.01 * (i % 5),
                grad_norm=0.5 + (i % 7),
            )
            for i in range(first, min(n, first + FRAME))
        ]


def stream(endpoint: str, n: int) -> float:
    """Send the job; returns records/s to the last Ack."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    start = JobStart(
        job=JOB, run=7, seq=0, wall_time=time.time(), optimizer=OptimizerInfo(kind="SGD", lr=1e-3)
    )
    t0 = time.perf_counter()
    sock.send(encode(Batch(job=JOB, run=7, frame_id=0, records=[start])))
    decode_reply(sock.recv())
    in_flight = 0
    for frame_id, steps in enumerate(records(n), 1):
        sock.send(encode(Batch(job=JOB, run=7, frame_id=frame_id, records=list(steps))))
        in_flight += 1
        while in_flight >= WINDOW:
            in_flight -= isinstance(decode_reply(sock.recv()), Ack)
    while in_flight:
        in_flight -= isinstance(decode_reply(sock.recv()), Ack)
    rate = n / (time.perf_counter() - t0)
    sock.close(linger=0)
    ctx.term()
    return rate


def restart(daemon: Daemon, want: Any) -> tuple[float, float, str]:
    daemon.kill()
    size = daemon.log.stat().st_size
    t0, healthz = daemon.start()
    assert daemon.proc is not None
    _until(f"{daemon.http}/api/jobs/{JOB}", daemon.proc, want)
    state = time.perf_counter() - t0
    with daemon.log.open("rb") as f:
        f.seek(size)
        found = re.findall(rb"analysis rebuilt from (.+?) in ([0-9.]+)s", f.read())
    how = f"{found[-1][0].decode()} ({float(found[-1][1]):.2f} s)" if found else "?"
    return healthz, state, how


@contextmanager
def database(postgres: bool, tmp: Path, n: int) -> Iterator[str]:
    if not postgres:
        yield f"sqlite:///{tmp / f'restart-{n}.db'}"
        return
    with postgres_database() as url:
        if url is None:
            raise SystemExit("no PostgreSQL reachable")
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="100000,1000000,2000000")
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument(
        "--checkpoint-seconds",
        default="1",
        help="the daemon's setting (default here 1: this stream is far faster than a job's)",
    )
    parser.add_argument(
        "--full-replay-max",
        type=int,
        default=2_000_000,
        help="time the full replay only up to this length (at 10^7 steps it takes minutes)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.steps.split(",")]
    engine_name = "PostgreSQL" if args.postgres else "SQLite"
    command = (
        f"python -m bench.perf.restart --steps {args.steps} "
        f"--checkpoint-seconds {args.checkpoint_seconds}"
    )
    command += " --postgres" if args.postgres else ""
    print(header(f"Restart time against stored job length ({engine_name})", command))
    print(
        "| stored steps | ingest rec/s | variant | /healthz s | job's state s | rebuilt from (in) |"
    )
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with database(args.postgres, tmp, 0) as url:
            fresh = Daemon(url, tmp / "fresh.log")
            _, healthz = fresh.start()
            fresh.stop()
            print(f"| 0 | | fresh start, empty database | {healthz:.2f} | | |")
        for n in sizes:
            with database(args.postgres, tmp, n) as url:
                flags = ("--checkpoint-seconds", args.checkpoint_seconds)
                daemon = Daemon(url, tmp / f"daemon-{n}.log", flags)
                try:
                    daemon.start()
                    rate = stream(daemon.endpoint, n)
                    want = _shown(_get(f"{daemon.http}/api/jobs/{JOB}"))
                    assert want[:2] == ("running", n - 1), want
                    variants = ["checkpoint"] + ["full replay"] * (n <= args.full_replay_max)
                    for variant in variants:
                        if variant == "full replay":
                            engine = sqlalchemy.create_engine(url)
                            with engine.begin() as conn:
                                conn.execute(sqlalchemy.text("DELETE FROM checkpoints"))
                            engine.dispose()
                        healthz, state, how = restart(daemon, want)
                        print(
                            f"| {n:,} | {rate:,.0f} | SIGKILL, {variant} | {healthz:.2f} | "
                            f"{state:.2f} | {how} |",
                            flush=True,
                        )
                finally:
                    daemon.stop()


if __name__ == "__main__":
    main()
