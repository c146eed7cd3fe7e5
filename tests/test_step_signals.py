"""Per-step signals from the optimizer's state: the update norm is the step actually
taken, the moment ratio reacts when the gradient outruns Adam's second moment; an
earlier database gains the new column when the daemon starts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import sqlalchemy
import torch

import edgewatch
from edgewatch.server import Daemon
from edgewatch.server.store import Store
from edgewatch.server.upgrade import base_columns


def _train(
    daemon: Daemon, job: str, optimizer_for: type[torch.optim.Optimizer], **kwargs: float | bool
) -> tuple[list[float], list[float]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 1))
    optimizer = optimizer_for(model.parameters(), **kwargs)  # type: ignore[arg-type]
    x, y = torch.randn(64, 6), torch.randn(64, 1)
    moved = []
    with edgewatch.attach(
        optimizer, model=model, job=job, endpoint=daemon.endpoint, step_signals=True
    ) as mon:
        for step in range(40):
            scale = 30.0 if step == 30 else 1.0  # one sudden, large gradient
            loss = torch.nn.functional.mse_loss(model(x), y) * scale
            loss.backward()  # type: ignore[no-untyped-call]
            before = [p.detach().clone() for p in model.parameters()]
            optimizer.step()
            moved.append(
                math.sqrt(
                    sum(
                        float((p.detach() - b).pow(2).sum())
                        for p, b in zip(model.parameters(), before, strict=True)
                    )
                )
            )
            mon.step(loss)
            optimizer.zero_grad()
    state = daemon.jobs.get(job)
    assert state is not None
    rows = daemon.store.steps(state.pk)
    return moved, rows  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [
        (torch.optim.Adam, {"lr": 1e-2}),
        (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.0, "betas": (0.9, 0.95)}),
        (torch.optim.SGD, {"lr": 1e-2}),
        (torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9}),
        (torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9, "nesterov": True}),
    ],
)
def test_the_stored_update_norm_is_the_step_the_optimizer_took(
    daemon: Daemon, optimizer: type[torch.optim.Optimizer], kwargs: dict[str, float]
) -> None:
    moved, rows = _train(daemon, "signals", optimizer, **kwargs)
    stored = [r["update_norm"] for r in rows]  # type: ignore[index]
    assert stored == pytest.approx(moved, rel=1e-4)


def test_the_moment_ratio_jumps_when_the_gradient_outruns_adams_second_moment(
    daemon: Daemon,
) -> None:
    _, rows = _train(daemon, "ratio", torch.optim.Adam, lr=1e-3)
    ratio = [r["moment_ratio"] for r in rows]  # type: ignore[index]
    assert all(r is not None and r > 0 for r in ratio)
    before = max(ratio[10:30])
    assert ratio[30] > 5 * before  # g² at 900× its usual size against v̂ of the past


def test_sgd_reports_no_moment_ratio(daemon: Daemon) -> None:
    _, rows = _train(daemon, "sgd", torch.optim.SGD, lr=1e-2)
    assert all(r["moment_ratio"] is None for r in rows)  # type: ignore[index]


def test_a_database_of_an_earlier_version_gains_the_new_column(tmp_path: Path) -> None:
    # The versions before moment_ratio made their tables with create_all and kept no
    # alembic_version table: such a database is made here by dropping both, and the
    # tables of later revisions (several daemons' leases and checkpoints, retention's
    # step_blocks, the LR plans').
    url = f"sqlite:///{tmp_path / 'old.db'}"
    Store(url).close()
    engine = sqlalchemy.create_engine(url)
    base = base_columns()
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("ALTER TABLE steps DROP COLUMN moment_ratio"))
        conn.execute(sqlalchemy.text("DROP TABLE alembic_version"))
        for later in set(sqlalchemy.inspect(conn).get_table_names()) - set(base):
            conn.execute(sqlalchemy.text(f"DROP TABLE {later}"))
    columns = {c["name"] for c in sqlalchemy.inspect(engine).get_columns("steps")}
    assert "moment_ratio" not in columns
    engine.dispose()
    store = Store(url)
    columns = {c["name"] for c in sqlalchemy.inspect(store.engine).get_columns("steps")}
    assert "moment_ratio" in columns
    store.close()
