"""End-to-end ingest: records/s from N clients to committed rows, next to the raw insert
rate of the same rows through SQLAlchemy, measured in the same run.

- raw (daemon path): ``Store.write`` of ready tuples, the daemon's own write path
  (driver-level executemany / unnest), no sockets, no decoding;
- raw (Core dicts): ``conn.execute(insert(steps), list_of_dicts)``, the textbook
  SQLAlchemy bulk insert, for reference;
- end to end: N DEALER sockets send pre-encoded frames of 4096 step records (the
  client's own frame size) to ``edgewatch serve`` in its own process, at most 8
  unacknowledged frames each; the clock stops at the last Ack, which comes after the
  commit. The database is then counted.

Usage: python bench/ingest.py [--clients 4] [--records 400000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import msgspec
import sqlalchemy
import zmq
from common import DAEMON_PIDS, daemon_process, header, peak_rss_mb, postgres_database

from edgewatch.schemas import Ack, Batch, JobStart, OptimizerInfo, Step, decode_reply, encode
from edgewatch.server.rows import step_row
from edgewatch.server.store import FrameWrite, JobProgress, Store
from edgewatch.server.tables import StepRow

FRAME = 4096
WINDOW = 8
LAST_LAGS: list[float] = []  # median and p99 send-to-Ack of the last end-to-end run
LAST_RSS: list[float] = []  # the daemon's peak RSS in that run (MB)


def make_steps(job: str, run: int, n: int, first_seq: int = 1) -> list[Step]:
    now = time.time()
    return [
        Step(
            job=job,
            run=run,
            seq=first_seq + i,
            step=i,
            wall_time=now,
            lr=1e-3,
            loss=2.0 + 1e-6 * i,
            grad_norm=0.5,
            update_norm=1e-3,  # what an AdamW client sends per step
            moment_ratio=1.0,
        )
        for i in range(n)
    ]


def raw_rates(url: str, n: int) -> tuple[float, float]:
    store = Store(url)
    start = JobStart(
        job="raw", run=1, seq=0, wall_time=time.time(), optimizer=OptimizerInfo(kind="SGD", lr=1e-3)
    )
    pk = store.upsert_job(start)["pk"]
    rows = [step_row(pk, s) for s in make_steps("raw", 1, n)]
    t0 = time.perf_counter()
    for i in range(0, n, FRAME):
        frame = FrameWrite(job_pk=pk, steps=rows[i : i + FRAME])
        store.write([frame], [JobProgress(pk, time.time(), i, 1.0, 0)])
    daemon_path = n / (time.perf_counter() - t0)
    columns = [c.name for c in StepRow.__table__.columns]
    from edgewatch.server.tables import INSERT_COLUMNS

    dicts = [dict(zip(INSERT_COLUMNS["steps"], r, strict=True)) for r in rows]
    for d in dicts:
        d["run"] = 2
    assert set(columns) == set(INSERT_COLUMNS["steps"])
    t0 = time.perf_counter()
    for i in range(0, n, FRAME):
        with store.engine.begin() as conn:
            conn.execute(sqlalchemy.insert(StepRow), dicts[i : i + FRAME])
    core = n / (time.perf_counter() - t0)
    store.close()
    return daemon_path, core


def end_to_end(
    url: str, clients: int, per_client: int, rate: float | None = None
) -> tuple[float, int]:
    """Records/s and rows stored; at full speed, or releasing frames at ``rate`` records/s
    in all (round robin over the clients) to measure the lag of a sustainable load."""
    with daemon_process(url, commit_interval="0.05") as (endpoint, _http):
        ctx = zmq.Context()
        socks, frames = [], []
        for c in range(clients):
            job, run = f"bench-{c}", 1000 + c
            start = JobStart(
                job=job,
                run=run,
                seq=0,
                wall_time=time.time(),
                optimizer=OptimizerInfo(kind="SGD", lr=1e-3),
            )
            steps = make_steps(job, run, per_client)
            payloads = [encode(Batch(job=job, run=run, frame_id=0, records=[start]))]
            payloads += [
                encode(Batch(job=job, run=run, frame_id=k + 1, records=steps[i : i + FRAME]))
                for k, i in enumerate(range(0, per_client, FRAME))
            ]
            sock = ctx.socket(zmq.DEALER)
            sock.connect(endpoint)
            socks.append(sock)
            frames.append(payloads)
        for sock, payloads in zip(socks, frames, strict=True):  # job starts first, untimed
            sock.send(payloads[0])
            assert isinstance(decode_reply(sock.recv()), Ack)
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        next_frame = [1] * clients
        in_flight = [0] * clients
        sent_at: dict[tuple[int, int], float] = {}
        lags: list[float] = []  # send to Ack (after the commit), per frame
        acked = 0
        t0 = time.perf_counter()
        released = 0  # frames sent so far, all clients (for pacing)
        while acked < clients * per_client:
            for c, sock in enumerate(socks):
                while in_flight[c] < WINDOW and next_frame[c] < len(frames[c]):
                    if rate and time.perf_counter() < t0 + released * FRAME / rate:
                        break  # paced: this frame's time has not come
                    released += 1
                    sock.send(frames[c][next_frame[c]])
                    sent_at[c, next_frame[c]] = time.perf_counter()
                    next_frame[c] += 1
                    in_flight[c] += 1
            for sock, _ in poller.poll(5 if rate else 1000):
                reply = decode_reply(sock.recv())
                assert isinstance(reply, Ack), reply
                acked += reply.stored + reply.duplicates
                c = socks.index(sock)
                lags.append(time.perf_counter() - sent_at.pop((c, reply.frame_id)))
                in_flight[c] -= 1
        elapsed = time.perf_counter() - t0
        LAST_RSS[:] = [peak_rss_mb(DAEMON_PIDS[-1])]
        for sock in socks:
            sock.close(0)
        ctx.term()
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        stored = conn.scalar(sqlalchemy.text("SELECT count(*) FROM steps"))
    engine.dispose()
    lags.sort()
    LAST_LAGS[:] = [lags[len(lags) // 2], lags[int(len(lags) * 0.99)]]
    return clients * per_client / elapsed, int(stored or 0)


def _fresh(url: str, tmp: Path) -> str:
    """An empty database for another end-to-end run."""
    if url.startswith("sqlite"):
        return f"sqlite:///{tmp / 'paced.db'}"
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        # alembic_version too: a database without it is empty to the upgrade at start.
        tables = "alerts, steps, sharpness, events, jobs, alembic_version"
        conn.execute(sqlalchemy.text(f"DROP TABLE {tables}"))
    engine.dispose()
    return url


def forecast_cost(n: int) -> tuple[float, float, float]:
    """µs per record of the daemon's forecast (``RunAnalysis.steps``, fed frames of FRAME
    step records as the ingest feeds them) on a quiet job and on one that stays
    unstable (its loss 3x its best from a tenth of the way on: no step is quiet, each
    goes through the scalar path), and of the raw insert path, in one process."""
    from edgewatch.server.analysis import RunAnalysis

    optimizer = {"kind": "AdamW", "lr": 1e-3, "betas": (0.9, 0.95)}
    costs = []
    for damaged in (False, True):
        steps = make_steps("cost", 1, n)
        if damaged:
            steps = [msgspec.structs.replace(s, loss=6.0) if s.step > n // 10 else s for s in steps]
        frames = [steps[i : i + FRAME] for i in range(0, n, FRAME)]
        analysis = RunAnalysis(1, 1, optimizer, total_steps=n)
        t0 = time.perf_counter()
        for frame in frames:
            analysis.steps(frame)
        costs.append((time.perf_counter() - t0) / n * 1e6)
        assert analysis.forecast.state == ("unstable" if damaged else "stable")
    with tempfile.TemporaryDirectory() as tmp:
        raw, _ = raw_rates(f"sqlite:///{Path(tmp) / 'cost.db'}", n)
    return costs[0], costs[1], 1e6 / raw


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--records", type=int, default=400_000, help="in all, split over clients")
    parser.add_argument(
        "--paced",
        type=float,
        default=0.0,
        help="also run at this fraction of the full-speed rate, for the lag at a steady load",
    )
    args = parser.parse_args()
    per_client = args.records // args.clients
    print(
        header(
            "Ingest: N clients to committed rows, next to the raw insert rate",
            "make bench-ingest  "
            f"(bench/ingest.py --clients {args.clients} --records {args.records}"
            + (f" --paced {args.paced}" if args.paced else "")
            + ")",
        )
    )
    print(
        "| database | raw insert, daemon path (rows/s) | raw insert, Core dicts (rows/s) | "
        f"end to end, {args.clients} clients (records/s) | e2e / raw | rows stored | "
        "frame send to Ack, median / p99 (ms) | daemon peak RSS (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, postgres_database() as pg:
        targets = [
            (
                "SQLite (WAL)",
                f"sqlite:///{Path(tmp) / 'raw.db'}",
                f"sqlite:///{Path(tmp) / 'e2e.db'}",
            )
        ]
        if pg is not None:
            targets.append(("PostgreSQL", pg, pg))
        for name, raw_url, e2e_url in targets:
            raw, core = raw_rates(raw_url, args.records)
            if raw_url == e2e_url:  # one PostgreSQL database: start the e2e run empty
                _fresh(e2e_url, Path(tmp))
            e2e, stored = end_to_end(e2e_url, args.clients, per_client)
            print(
                f"| {name} | {raw:,.0f} | {core:,.0f} | {e2e:,.0f} | {e2e / raw:.0%} | "
                f"{stored:,} of {args.clients * per_client:,} | "
                f"{1000 * LAST_LAGS[0]:.0f} / {1000 * LAST_LAGS[1]:.0f} | {LAST_RSS[0]:.0f} |",
                flush=True,
            )
            if args.paced:
                paced_url = _fresh(e2e_url, Path(tmp))
                rate = args.paced * e2e
                got, stored = end_to_end(paced_url, args.clients, per_client, rate=rate)
                print(
                    f"| {name}, paced at {rate:,.0f} records/s | | | {got:,.0f} | | "
                    f"{stored:,} of {args.clients * per_client:,} | "
                    f"{1000 * LAST_LAGS[0]:.0f} / {1000 * LAST_LAGS[1]:.0f} | "
                    f"{LAST_RSS[0]:.0f} |",
                    flush=True,
                )
    forecast, unstable, raw_us = forecast_cost(args.records)
    print(
        f"\nThe forecast's share: {forecast:.2f} µs per step record (fed in frames of {FRAME}, "
        f"in this process) against {raw_us:.2f} µs for the raw SQLite insert of the same "
        f"record, measured beside it: {forecast / raw_us:.0%} of the insert. On a job that "
        f"stays unstable (no step quiet): {unstable:.2f} µs per record, "
        f"{unstable / raw_us:.0%} of the insert."
    )


if __name__ == "__main__":
    main()
