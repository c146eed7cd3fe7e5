"""Duplicates are counted exactly and stored once on every write path: SQLite's, and on
the real PostgreSQL both COPY (server/pgcopy.py) and the ``INSERT ... unnest`` path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edgewatch.schemas import Ack, Batch, Event, JobStart, OptimizerInfo, Sharpness, Step, encode
from edgewatch.server.analysis import record_from_row
from edgewatch.server.config import Settings
from edgewatch.server.counters import DaemonCounters
from edgewatch.server.intake import Intake
from edgewatch.server.state import JobTable
from edgewatch.server.store import Store

START = JobStart(job="j", run=1, seq=0, wall_time=1.0, optimizer=OptimizerInfo(kind="SGD", lr=0.1))


def step(i: int, loss: float = 1.0) -> Step:
    lrs = [0.1, 0.01] if i % 7 == 0 else None  # JSON text in the row, through COPY too
    return Step(
        job="j", run=1, seq=i + 1, step=i, wall_time=1.0 + i, lr=0.1, loss=loss, group_lrs=lrs
    )


def steps(first: int, last: int, loss: float = 1.0) -> list[Step | JobStart]:
    return [step(i, loss) for i in range(first, last)]


def frame(frame_id: int, records: list[Step | JobStart]) -> bytes:
    return encode(Batch(job="j", run=1, frame_id=frame_id, records=records))


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres-copy", marks=pytest.mark.postgres),
        pytest.param("postgres-unnest", marks=pytest.mark.postgres),
    ]
)
def intake(request: pytest.FixtureRequest, tmp_path: Path) -> Intake:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'e.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    store = Store(url, copy=request.param != "postgres-unnest")
    request.addfinalizer(store.close)
    return Intake(Settings(db=url), store, JobTable(), DaemonCounters())


def commit(intake: Intake, *frames: bytes) -> list[tuple[int, int, int]]:
    """Send the frames, commit them together; (frame id, stored, duplicates) per Ack."""
    for data in frames:
        assert intake.receive(b"peer", [data]) == []
    return acks(intake)


def acks(intake: Intake) -> list[tuple[int, int, int]]:
    """Commit what is pending; (frame id, stored, duplicates) per Ack."""
    replies = [message for _, message in intake.commit()]
    assert all(isinstance(a, Ack) for a in replies), replies
    return [(a.frame_id, a.stored, a.duplicates) for a in replies if isinstance(a, Ack)]


def test_resent_steps_are_counted_exactly_and_stored_once(intake: Intake) -> None:
    assert commit(intake, frame(1, [START, *steps(0, 100)])) == [(1, 100, 0)]
    # One commit: a resend overlapping what is stored, a frame overlapping that resend
    # (its first 10 keys are new to the database but came first in frame 2), a new frame
    # whose losses differ, and a frame that carries one step twice.
    assert commit(
        intake,
        frame(2, steps(50, 150)),
        frame(3, steps(140, 200, loss=9.0)),
        frame(4, steps(200, 300, loss=2.0)),
        frame(5, [step(300), step(300)]),
    ) == [(2, 50, 50), (3, 50, 10), (4, 100, 0), (5, 1, 1)]
    # After duplicates, commits with and without them still count exactly.
    assert commit(intake, frame(6, steps(301, 400))) == [(6, 99, 0)]
    assert commit(intake, frame(7, steps(350, 450)), frame(8, steps(450, 500))) == [
        (7, 50, 50),
        (8, 50, 0),
    ]
    assert commit(intake, frame(9, steps(500, 600))) == [(9, 100, 0)]
    assert commit(intake, frame(10, steps(0, 600))) == [(10, 0, 600)]

    state = intake.jobs.get("j")
    assert state is not None and state.records == 600 and state.last_step == 599
    assert intake.counters.records_ingested == 600
    rows = intake.store.steps(state.pk)
    assert [r["step"] for r in rows] == list(range(600))  # each exactly once
    assert intake.store.count("steps") == 600
    # A key sent twice in one commit is stored from the first frame that carried it.
    losses = {r["step"]: r["loss"] for r in rows}
    assert [losses[s] for s in (139, 140, 149, 150, 199, 200)] == [1.0, 1.0, 1.0, 9.0, 9.0, 2.0]
    assert rows[7]["group_lrs"] == [0.1, 0.01] and rows[8]["group_lrs"] is None


def test_every_field_of_every_record_is_stored_and_read_back_as_sent(intake: Intake) -> None:
    """A record's row is its wire Struct's fields (``tables.record_columns``): each record
    with every field set comes back from the store, as ``replay`` and a restarted daemon
    read it, equal to what the client sent."""
    sent = [
        Step(job="j", run=1, seq=1, step=0, wall_time=2.0, lr=0.1, group_lrs=[0.1, 0.01],
             loss=2.5, grad_norm=1.5, update_norm=0.25, loss_scale=1024.0, tokens=4096,
             moment_ratio=0.75),
        Sharpness(job="j", run=1, seq=2, step=0, wall_time=2.5, value=12.5, preconditioned=True,
                  method="lanczos", matvecs=6, residual=0.125, probe_batch=32, seconds=0.5,
                  lr=0.1, update_curvature=3.5, eta_max=0.2),
        Event(job="j", run=1, seq=3, step=1, wall_time=3.0, kind="checkpoint_saved",
              detail="at step 1"),
    ]  # fmt: skip
    data = encode(Batch(job="j", run=1, frame_id=1, records=[START, *sent]))
    assert commit(intake, data) == [(1, 3, 0)]
    state = intake.jobs.get("j")
    assert state is not None
    stored = intake.store.run_records(state.pk, 1)
    assert [record_from_row("j", table, row) for table, row in stored] == sent


def test_nonfinite_losses_are_stored_as_data(intake: Intake) -> None:
    records = [START, step(0, math.nan), step(1, math.inf), step(2, -math.inf)]
    assert commit(intake, frame(1, records)) == [(1, 3, 0)]
    state = intake.jobs.get("j")
    assert state is not None
    losses = [r["loss"] for r in intake.store.steps(state.pk)]
    if intake.store.engine.dialect.name == "sqlite":
        assert losses[0] is None  # SQLite stores NaN as NULL (tables.py)
    else:
        assert math.isnan(losses[0])
    assert losses[1:] == [math.inf, -math.inf]


def test_one_commit_holds_the_steps_of_several_jobs_one_of_them_new(intake: Intake) -> None:
    """On PostgreSQL one COPY takes every frame's steps: jobs stay apart, and a job whose
    start is in the commit's second frame is known by the time its rows are checked."""
    other = JobStart(job="k", run=1, seq=0, wall_time=1.0, optimizer=START.optimizer)
    k_steps = [Step(job="k", run=1, seq=i + 1, step=i, wall_time=2.0, lr=0.1) for i in range(50)]
    assert commit(
        intake,
        frame(1, [START, *steps(0, 100)]),
        encode(Batch(job="k", run=1, frame_id=2, records=[other, *k_steps])),
        frame(3, steps(100, 200)),
    ) == [(1, 100, 0), (2, 50, 0), (3, 100, 0)]
    for job, n in (("j", 200), ("k", 50)):
        state = intake.jobs.get(job)
        assert state is not None and state.records == n
        assert len(intake.store.steps(state.pk)) == n
