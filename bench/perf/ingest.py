"""End-to-end ingest: records/s from N clients to committed rows, next to the raw insert
rate of the same rows through SQLAlchemy, measured in the same run.

- raw (daemon path): ``Store.write`` of ready tuples, one frame of 4096 rows per
  transaction, the daemon's own write path (SQLite: driver-level executemany;
  PostgreSQL: COPY, server/pgcopy.py, or with ``pg_copy`` off INSERT ... unnest), no
  sockets, no decoding;
- raw (Core dicts): ``conn.execute(insert(steps), list_of_dicts)``, the textbook
  SQLAlchemy bulk insert, for reference;
- raw COPY (PostgreSQL): psycopg's binary ``COPY steps FROM STDIN`` of the same rows, no
  savepoint, no duplicate handling, in transactions of 20,480 rows (the daemon's commit at
  full load: ``commit_rows`` is 20,000, frames are 4096): the engine's ceiling;
- end to end: N DEALER sockets send pre-encoded frames of 4096 step records (the
  client's own frame size) to ``edgewatch serve`` in its own process, at most 8
  unacknowledged frames each; the clock stops at the last Ack, which comes after the
  commit. The database is then counted. On PostgreSQL it runs twice, with COPY and with
  INSERT ... unnest (``EDGEWATCH_PG_COPY=false``), one after the other.

Usage: python -m bench.perf.ingest [--clients 4] [--records 400000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import sqlalchemy
import zmq

from bench.common import DAEMON_PIDS, daemon_process, header, peak_rss_mb, postgres_database
from edgewatch.schemas import Ack, Batch, JobStart, OptimizerInfo, Step, decode_reply, encode
from edgewatch.server.pgcopy import CopyInsert
from edgewatch.server.rows import step_row
from edgewatch.server.store import FrameWrite, JobProgress, Store
from edgewatch.server.tables import INSERT_COLUMNS, Base, StepRow

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


def _raw_job(store: Store, n: int) -> tuple[int, list[tuple[object, ...]]]:
    start = JobStart(
        job="raw", run=1, seq=0, wall_time=time.time(), optimizer=OptimizerInfo(kind="SGD", lr=1e-3)
    )
    pk = store.upsert_job(start)["pk"]
    return pk, [step_row(pk, s) for s in make_steps("raw", 1, n)]


def raw_rates(url: str, n: int, copy: bool = True, core: bool = True) -> tuple[float, float | None]:
    """Rows/s of the daemon's write path and of Core's executemany of dicts (or None)."""
    store = Store(url, copy=copy)
    pk, rows = _raw_job(store, n)
    t0 = time.perf_counter()
    for i in range(0, n, FRAME):
        frame = FrameWrite(job_pk=pk, steps=rows[i : i + FRAME])
        store.write([frame], [JobProgress(pk, time.time(), i, 1.0, 0)])
        assert frame.stored == len(frame.steps)
    daemon_path = n / (time.perf_counter() - t0)
    if not core:
        store.close()
        return daemon_path, None
    columns = [c.name for c in StepRow.__table__.columns]
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


def raw_copy_rate(url: str, n: int) -> float:
    """Rows/s of a plain binary COPY into the step table, 5 frames per transaction."""
    store = Store(url)
    _pk, rows = _raw_job(store, n)
    columns = INSERT_COLUMNS["steps"]
    types = CopyInsert(StepRow.__table__, columns).types  # type: ignore[arg-type]
    sql = f"COPY steps ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    per_commit = 5 * FRAME
    t0 = time.perf_counter()
    for i in range(0, n, per_commit):
        with store.engine.begin() as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            with cursor.copy(sql) as copy:
                copy.set_types(types)
                for row in rows[i : i + per_commit]:
                    copy.write_row(row)
    rate = n / (time.perf_counter() - t0)
    store.close()
    return rate


@contextlib.contextmanager
def pg_copy(on: bool) -> Iterator[None]:
    """The daemons started inside write PostgreSQL step rows with COPY or with unnest."""
    before = os.environ.get("EDGEWATCH_PG_COPY")
    os.environ["EDGEWATCH_PG_COPY"] = "true" if on else "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ["EDGEWATCH_PG_COPY"]
        else:
            os.environ["EDGEWATCH_PG_COPY"] = before


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
    """An empty database for another measurement: a new SQLite file, or the PostgreSQL
    database emptied."""
    if url.startswith("sqlite"):
        return f"sqlite:///{tmp / f'{len(list(tmp.iterdir()))}.db'}"
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        # Every table the daemon makes (a partitioned one with its partitions), and
        # alembic_version: a database without it is empty to the upgrade at start.
        tables = ", ".join([*Base.metadata.tables, "alembic_version"])
        conn.execute(sqlalchemy.text(f"DROP TABLE IF EXISTS {tables} CASCADE"))
    engine.dispose()
    return url


def forecast_cost(n: int) -> tuple[float, float, float]:
    """µs per record of the daemon's forecast (``RunAnalysis.steps``, fed frames of FRAME
    step records as the ingest feeds them) on a quiet job and on one that stays
    unstable (its loss 3x its best from a tenth of the way on: no step is quiet, each
    goes through the scalar path), and of the raw insert path, in one process."""
    from edgewatch.server.analysis import RunAnalysis, load_block_path

    load_block_path(background=False)  # its import (scipy.signal) is not a step's cost
    # make_steps' loss creeps up by 1e-6 a step: over 100,000 steps that is a rise the
    # loss rule rightly calls unstable (at 200,000 steps, 1.1x its best) on the quiet job.
    n = min(n, 100_000)
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
            f"(python -m bench.perf.ingest --clients {args.clients} --records {args.records}"
            + (f" --paced {args.paced}" if args.paced else "")
            + ")",
        )
    )
    print(
        "| database | raw insert, daemon path (rows/s) | raw insert, Core dicts (rows/s) | "
        "raw COPY (rows/s) | "
        f"end to end, {args.clients} clients (records/s) | e2e / raw daemon path | "
        "e2e / raw COPY | rows stored | frame send to Ack, median / p99 (ms) | "
        "daemon peak RSS (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    total = args.clients * per_client
    e2e_by_copy: dict[bool, float] = {}
    with tempfile.TemporaryDirectory() as tmp, postgres_database() as pg:
        # (name, database, PostgreSQL's pg_copy or None for SQLite)
        targets: list[tuple[str, str, bool | None]] = [("SQLite (WAL)", "sqlite://", None)]
        raw_copy = None
        if pg is not None:
            raw_copy = raw_copy_rate(_fresh(pg, Path(tmp)), args.records)
            targets.append(("PostgreSQL, INSERT ... unnest (pg_copy=false)", pg, False))
            targets.append(("PostgreSQL, COPY", pg, True))
        for name, url, copy in targets:
            # Each measurement starts from an empty database.
            raw, core = raw_rates(_fresh(url, Path(tmp)), args.records, copy is not False,
                                  core=copy is not True)  # fmt: skip
            e2e_url = _fresh(url, Path(tmp))
            with pg_copy(copy is not False):
                e2e, stored = end_to_end(e2e_url, args.clients, per_client)
            if copy is not None:
                e2e_by_copy[copy] = e2e
            pg_only = copy is not None and raw_copy is not None
            print(
                f"| {name} | {raw:,.0f} | {f'{core:,.0f}' if core else ''} | "
                f"{f'{raw_copy:,.0f}' if pg_only else ''} | {e2e:,.0f} | {e2e / raw:.0%} | "
                f"{f'{e2e / raw_copy:.0%}' if pg_only and raw_copy else ''} | "
                f"{stored:,} of {total:,} | "
                f"{1000 * LAST_LAGS[0]:.0f} / {1000 * LAST_LAGS[1]:.0f} | {LAST_RSS[0]:.0f} |",
                flush=True,
            )
            if args.paced and copy is not False:
                paced_url = _fresh(url, Path(tmp))
                rate = args.paced * e2e
                got, stored = end_to_end(paced_url, args.clients, per_client, rate=rate)
                print(
                    f"| {name}, paced at {rate:,.0f} records/s | | | | {got:,.0f} | | | "
                    f"{stored:,} of {total:,} | "
                    f"{1000 * LAST_LAGS[0]:.0f} / {1000 * LAST_LAGS[1]:.0f} | "
                    f"{LAST_RSS[0]:.0f} |",
                    flush=True,
                )
    if raw_copy is not None and len(e2e_by_copy) == 2:
        copy_e2e, unnest_e2e = e2e_by_copy[True], e2e_by_copy[False]
        print(
            f"\nPostgreSQL end to end in this run: COPY {copy_e2e:,.0f} records/s, "
            f"{copy_e2e / unnest_e2e:.2f}x INSERT ... unnest's {unnest_e2e:,.0f}, "
            f"{copy_e2e / raw_copy:.0%} of raw COPY's {raw_copy:,.0f} rows/s."
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
