"""`make bench-fuzz`: 100,000 generated hostile frames against a live `edgewatch serve`,
while a real training client streams good steps beside them.

Frames: random bytes, truncated MessagePack, random MessagePack values, batches of
record-shaped maps with fields of wrong types and out-of-range values, unknown record
tags, future protocol versions, NaN/Inf/negative values, steps going backwards, job ids
with odd characters or 10,000 characters, huge arrays. Reported: that the daemon is
alive and answered every frame, that every good step is stored, the rejections by
reason, and the rate.
"""

from __future__ import annotations

import math
import random
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import zmq

from bench.common import daemon_process, header
from edgewatch_testkit.toy import run_toy

FRAMES = 100_000
TAGS = ["step", "sharpness", "event", "job_start", "job_end", "lr_plan", "batch", "bogus", ""]
FIELDS = ["step", "wall_time", "lr", "loss", "grad_norm", "group_lrs", "value", "kind",
          "status", "optimizer", "steps", "lrs", "matvecs", "tokens", "loss_scale"]  # fmt: skip
ODD_JOBS = ["fz", "", "x" * 10_000, "job\x00nul", "ünï/cødé ✓", "../../etc/passwd", "a\nb"]


def scalar(rng: random.Random) -> Any:
    return rng.choice(
        [
            None,
            rng.random() < 0.5,
            rng.randint(-(2**63), 2**64 - 1),
            rng.choice([math.nan, math.inf, -math.inf, -1.0, 0.0, 1e308, rng.random()]),
            "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 12))),
            rng.randbytes(rng.randint(0, 16)),
            rng.choice(TAGS),
        ]
    )


def value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 2 or roll < 0.6:
        return scalar(rng)
    if roll < 0.8:
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {rng.choice(FIELDS + TAGS): value(rng, depth + 1) for _ in range(rng.randint(0, 6))}


def record(rng: random.Random, job: str) -> dict[str, Any]:
    r: dict[str, Any] = {
        "type": rng.choice(TAGS),
        "job": job if rng.random() < 0.8 else rng.choice(ODD_JOBS),
        "run": 1 if rng.random() < 0.8 else rng.randint(-5, 2**64 - 1),
        "seq": rng.randint(-3, 10_000),
    }
    for name in rng.sample(FIELDS, rng.randint(0, 6)):
        r[name] = value(rng)
    if rng.random() < 0.3:  # a plausible step, now and then going backwards or NaN
        r.update(type="step", step=rng.randint(-5, 100), wall_time=time.time(), lr=scalar(rng))
    return r


def frame(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.15:
        return rng.randbytes(rng.randint(0, 400))
    if kind < 0.3:
        return msgspec.msgpack.encode(value(rng))
    job = rng.choice(ODD_JOBS)
    batch = {
        "type": "batch",
        "protocol": rng.choice([1, 2, 2, 2, 3, 0, 99]),
        "job": job,
        "run": 1,
        "frame_id": rng.randint(0, 2**32),
        "records": [record(rng, job) for _ in range(rng.randint(0, 8))],
    }
    if kind > 0.999:  # a huge array (one frame in a thousand)
        batch["records"] = [{"type": "step"}] * rng.randint(100_000, 200_000)
    payload = msgspec.msgpack.encode(batch)
    if kind > 0.9:  # truncated
        payload = payload[: rng.randint(0, max(0, len(payload) - 1))]
    return payload


def metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("edgewatch_messages_rejected_total{"):
            name, number = line.rsplit(" ", 1)
            out[name.split('reason="')[1].rstrip('"}')] = float(number)
    return out


def main() -> int:
    rng = random.Random(2026)
    with daemon_process(f"sqlite:///{Path('/tmp') / f'fuzz-{time.time_ns()}.db'}") as (
        endpoint,
        url,
    ):
        context: zmq.Context[Any] = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 30_000)
        sock.connect(endpoint)
        started = time.perf_counter()
        answered = 0
        for i in range(FRAMES):
            sock.send(frame(rng))
            sock.recv()  # every frame gets an Ack or a Nack, or this raises after 30 s
            answered += 1
            if i % 10_000 == 0 and i:
                good = run_toy(f"good-{i}", endpoint, 200)  # good traffic in between
                assert good.stats["unacknowledged"] == 0
                print(f"  {i} frames, daemon answering; good job {i} stored", flush=True)
        seconds = time.perf_counter() - started
        sock.close()
        context.term()
        rejected = metrics(url)
        with urllib.request.urlopen(url + "/api/jobs", timeout=10) as response:
            jobs = msgspec.json.decode(response.read())
        good_jobs = [j for j in jobs if j["job_id"].startswith("good-")]
    lines = [header("Fuzz: hostile frames against a live daemon", "make bench-fuzz"), ""]
    lines.append(
        f"{answered:,} of {FRAMES:,} generated frames answered in {seconds:.0f} s "
        f"({answered / seconds:,.0f} frames/s); the daemon kept serving: "
        f"{len(good_jobs)} good jobs streamed in between, "
        f"{sum(j['records'] for j in good_jobs):,} records, all acknowledged and stored."
    )
    lines.append("")
    lines.append("| reason | rejected |")
    lines.append("|---|---|")
    for reason, count in sorted(rejected.items(), key=lambda kv: -kv[1]):
        if count:
            lines.append(f"| {reason} | {count:,.0f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
