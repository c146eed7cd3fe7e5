"""`make bench-outage`: training through a long daemon outage, with the disk spool, and
through a stalled daemon.

Three identical training loops (a small MLP, full batch, CPU) in one process, run in
alternated blocks of 200 steps so that all see the same machine drift, each monitored by
its own client: one whose daemon is up; one whose daemon is down the whole time (spool
on, ``max_buffered`` 20,000 records); one whose "daemon" is a ZeroMQ socket that takes
every frame and never answers (no spool, ``max_buffered`` 5,000: the oldest records are
dropped and counted). Reported: the step-time ratios against the daemon-up loop (target
<= 1.01), the down client's records in memory at most against the spool on disk, the
stalled client's drops, and, once a daemon comes up on the down client's endpoint,
whether every record arrives.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
import zmq

import edgewatch
from bench.common import header
from edgewatch.server import Daemon, Settings
from edgewatch_testkit.net import free_port

STEPS = 30_000
BLOCK = 200


def loop() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    return (
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        torch.randn(64, 32),
        torch.randn(64, 1),
    )


def block(parts: tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor],
          mon: edgewatch.Monitor) -> float:  # fmt: skip
    model, optimizer, x, y = parts
    start = time.perf_counter()
    for _ in range(BLOCK):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        mon.step(loss)
    return (time.perf_counter() - start) / BLOCK


def main() -> int:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        up_daemon = Daemon(
            Settings(db=f"sqlite:///{work / 'up.db'}", bind="tcp://127.0.0.1:*", http="127.0.0.1:0")
        ).start()
        down_endpoint = f"tcp://127.0.0.1:{free_port()}"
        up_loop, down_loop, stalled_loop = loop(), loop(), loop()
        context: zmq.Context[Any] = zmq.Context()
        black_hole = context.socket(zmq.ROUTER)  # reads frames, never acknowledges
        black_hole.setsockopt(zmq.LINGER, 0)
        black_hole.bind("tcp://127.0.0.1:*")
        swallowing = threading.Event()

        def swallow() -> None:
            while not swallowing.is_set():
                if black_hole.poll(100):
                    black_hole.recv_multipart()

        swallower = threading.Thread(target=swallow, daemon=True)
        swallower.start()
        stalled = edgewatch.attach(stalled_loop[1], job="stalled",
                                   endpoint=black_hole.getsockopt_string(zmq.LAST_ENDPOINT),
                                   max_buffered=5_000, close_timeout=1)  # fmt: skip
        up = edgewatch.attach(up_loop[1], job="up", endpoint=up_daemon.endpoint, close_timeout=60)
        down = edgewatch.attach(down_loop[1], job="down", endpoint=down_endpoint,
                                spool_dir=str(work / "spool"), max_buffered=20_000,
                                close_timeout=120)  # fmt: skip
        assert down.sender is not None
        times_up: list[float] = []
        times_down: list[float] = []
        times_stalled: list[float] = []
        in_memory = 0
        for i in range(STEPS // BLOCK):
            order = [
                (up_loop, up, times_up),
                (down_loop, down, times_down),
                (stalled_loop, stalled, times_stalled),
            ]
            for parts, mon, times in order[i % 3 :] + order[: i % 3]:
                times.append(block(parts, mon))
            in_memory = max(in_memory, down.sender.outbox.buffered)
        stalled.close()
        swallowing.set()
        swallower.join()
        black_hole.close()
        context.term()
        spool_bytes = sum(p.stat().st_size for p in (work / "spool").glob("*.spool"))
        spooled = down.stats["spooled"]
        came_back = Daemon(
            Settings(db=f"sqlite:///{work / 'down.db'}", bind=down_endpoint, http="127.0.0.1:0")
        ).start()
        started = time.perf_counter()
        down.close()
        drained = time.perf_counter() - started
        up.close()
        stored = came_back.store.count("steps")
        came_back.stop()
        up_daemon.stop()
    ratio = statistics.median(times_down) / statistics.median(times_up)
    stalled_ratio = statistics.median(times_stalled) / statistics.median(times_up)
    lines = [header("Training through a daemon outage (disk spool)", "make bench-outage"), ""]
    lines.append(
        f"{STEPS:,} steps each, alternated blocks of {BLOCK}. Median step: daemon up "
        f"{1e6 * statistics.median(times_up):.0f} µs, daemon down "
        f"{1e6 * statistics.median(times_down):.0f} µs: **ratio {ratio:.3f}** (target <= 1.01). "
        f"Down client: at most {in_memory:,} records in memory (max_buffered 20,000), "
        f"{spooled:,} records written to the spool ({spool_bytes / 1e6:.1f} MB on disk at the "
        f"end of the outage). Daemon started: {stored:,} of {STEPS:,} steps stored, the spool "
        f"drained in {drained:.1f} s; {down.stats['dropped']} dropped."
    )
    lines.append("")
    lines.append(
        f"Stalled daemon (takes frames, never acknowledges): median step "
        f"{1e6 * statistics.median(times_stalled):.0f} µs, **ratio {stalled_ratio:.3f}**; "
        f"{stalled.stats['dropped']:,} of {STEPS + 1:,} records dropped and counted "
        f"(max_buffered 5,000, no spool), {stalled.stats['acknowledged']} acknowledged."
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
