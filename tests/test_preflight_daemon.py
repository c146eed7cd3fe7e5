"""A pre-flight report reaches the daemon with the job's start, is stored, and is served."""

from __future__ import annotations

import torch

import edgewatch
from edgewatch.server import Daemon
from edgewatch_testkit.net import http_json


def test_the_preflight_report_reaches_the_api(daemon: Daemon) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def mse(m: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return torch.nn.functional.mse_loss(m(batch[0]), batch[1])

    report = edgewatch.preflight(
        model, opt, lambda m: mse(m, (x, y)), lambda t: 0.05, steps=20,
        batches=[(x, y)], loss=mse, total_steps=20,
    )  # fmt: skip
    with edgewatch.attach(
        opt, model=model, job="pf-job", endpoint=daemon.endpoint, preflight=report
    ) as mon:
        for _ in range(3):
            mse(model, (x, y)).backward()
            opt.step()
            mon.step(torch.tensor(1.0))
            opt.zero_grad()
    job = http_json(daemon.http_url + "/api/jobs/pf-job")
    stored = job["preflight"]
    assert stored["verdict"] == report.verdict
    assert stored["margin"] == report.margin
    assert stored["peak_lr"] == 0.05
    assert len(stored["curves"]["loss"]) == 20
    plain = http_json(daemon.http_url + "/api/jobs")
    assert any(j["job_id"] == "pf-job" for j in plain)
