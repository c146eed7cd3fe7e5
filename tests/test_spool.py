"""The client's disk spool: a long outage costs neither memory nor records; a spool cut
off mid-record is recovered by the next run; a full spool drops and counts."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from conftest import DaemonFactory

import edgewatch
from edgewatch.client.spool import Spool, read_intact
from edgewatch.schemas import Batch, Step, encode
from edgewatch_testkit.net import free_port, http_json


def stream(mon: edgewatch.Monitor, first: int, count: int, seconds_per_step: float = 0) -> None:
    param = mon.optimizer.param_groups[0]["params"][0]
    for i in range(first, first + count):
        param.grad = torch.ones_like(param)
        mon.optimizer.step()
        mon.step(float(i))
        if seconds_per_step:
            time.sleep(seconds_per_step)


def attach(job: str, endpoint: str, spool: Path, **options: object) -> edgewatch.Monitor:
    optimizer = torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=0.1)
    return edgewatch.attach(optimizer, job=job, endpoint=endpoint, spool_dir=str(spool), **options)


def test_a_long_outage_goes_to_disk_and_arrives_when_the_daemon_returns(
    make_daemon: DaemonFactory, tmp_path: Path
) -> None:
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    mon = attach("outage", endpoint, tmp_path / "spool", max_buffered=10_000, close_timeout=30)
    assert mon.sender is not None
    stream(mon, 0, 60_000)  # no daemon: 60k records against a 10k-record memory buffer
    deadline = time.monotonic() + 10
    while mon.stats["spooled"] < 50_000 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mon.sender.outbox.buffered <= 10_000  # memory stays bounded
    assert mon.stats["spooled"] >= 50_000 and mon.stats["dropped"] == 0
    daemon = make_daemon(bind=endpoint)
    stream(mon, 60_000, 1_000)
    mon.close()
    assert mon.stats["unacknowledged"] == 0
    steps = [s["step"] for s in http_json(daemon.http_url + "/api/jobs/outage/steps")]
    assert steps == list(range(61_000))
    assert not list((tmp_path / "spool").glob("*.spool"))  # emptied and removed


def test_what_a_run_could_not_send_is_sent_by_the_next_run(
    make_daemon: DaemonFactory, tmp_path: Path
) -> None:
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    first = attach("resumed", endpoint, tmp_path / "spool", close_timeout=1)
    stream(first, 0, 500)
    first.close()  # no daemon: the 500 steps stay in the spool file
    assert first.stats["unacknowledged"] > 0
    assert len(list((tmp_path / "spool").glob("*.spool"))) == 1
    daemon = make_daemon(bind=endpoint)
    second = attach("resumed", endpoint, tmp_path / "spool", close_timeout=20)
    stream(second, 500, 100)
    second.close()
    assert second.stats["unacknowledged"] == 0
    runs = {row["run"] for row in daemon.store.steps(1, limit=1000)}
    assert runs == {first.run, second.run}
    assert daemon.store.count("steps") == 600


def test_a_torn_spool_keeps_its_intact_frames_and_counts_the_rest(
    make_daemon: DaemonFactory, tmp_path: Path
) -> None:
    folder = tmp_path / "spool"
    spool = Spool(folder, "torn", 42, 1 << 20)
    records = [Step(job="torn", run=42, seq=i, step=i, wall_time=0.0, lr=0.1) for i in range(30)]
    for n in range(3):  # three frames of 10 steps
        payload = encode(
            Batch(job="torn", run=42, frame_id=n, records=records[10 * n : 10 * n + 10])
        )
        assert spool.append(payload)
    spool.close(remove=False)
    with spool.path.open("ab") as f:  # a process killed mid-write: a header and half a frame
        f.write(b"\x00\x10\x00\x00\x12\x34\x56\x78" + b"half a frame")
    frames, torn = read_intact(spool.path)
    assert len(frames) == 3 and torn == 20

    daemon = make_daemon()
    recovering = attach("torn", daemon.endpoint, folder, close_timeout=20)
    recovering.close()
    assert recovering.stats["spool_torn_bytes"] == 20
    assert recovering.stats["unacknowledged"] == 0
    stored = {row["step"] for row in daemon.store.steps(1, limit=100) if row["run"] == 42}
    assert stored == set(range(30))


def test_a_full_spool_drops_and_counts(tmp_path: Path) -> None:
    mon = attach("full", f"tcp://127.0.0.1:{free_port()}", tmp_path / "spool",
                 max_buffered=500, spool_max_bytes=20_000, close_timeout=0.5)  # fmt: skip
    stream(mon, 0, 5_000)
    deadline = time.monotonic() + 10
    while mon.stats["dropped"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    mon.close()
    assert mon.stats["dropped"] > 0
    assert sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.spool")) <= 20_000
