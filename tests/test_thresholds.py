"""Stability thresholds against the optimizers' own dynamics on a 1-D quadratic.

On f(x) = λx²/2 each optimizer is a linear recurrence; run the real torch optimizer
just below and just above the threshold and check that it contracts, then blows up.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from edgewatch.monitor import (
    adam_threshold,
    gd_threshold,
    heavy_ball_threshold,
    nesterov_threshold,
    stability_threshold,
)


def grows(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], curvature: float) -> bool:
    x = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    optimizer = make([x])
    for _ in range(3000):
        optimizer.zero_grad()
        (0.5 * curvature * x**2).sum().backward()
        optimizer.step()
    return bool(abs(x.item()) > 1.0)


@pytest.mark.parametrize(
    ("make", "threshold"),
    [
        (lambda p: torch.optim.SGD(p, lr=0.1), gd_threshold(0.1)),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), heavy_ball_threshold(0.1, 0.9)),
        (
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
            nesterov_threshold(0.1, 0.9),
        ),
    ],
    ids=["gd", "heavy-ball", "nesterov"],
)
def test_momentum_sgd_thresholds_separate_contraction_from_blow_up(
    make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], threshold: float
) -> None:
    assert not grows(make, 0.98 * threshold)
    assert grows(make, 1.02 * threshold)


def test_stability_threshold_reads_live_optimizers() -> None:
    p = [torch.zeros(1, requires_grad=True)]
    assert stability_threshold(torch.optim.SGD(p, lr=0.01)) == pytest.approx(200.0)
    assert stability_threshold(torch.optim.SGD(p, lr=0.01, momentum=0.9)) == pytest.approx(380.0)
    assert stability_threshold(torch.optim.Adam(p, lr=0.01)) == pytest.approx(3800.0)  # 38/η
    assert stability_threshold(torch.optim.AdamW(p, lr=1e-3, betas=(0.8, 0.99))) == pytest.approx(
        18 / 1e-3
    )
    assert adam_threshold(1e-3, 0.9) == pytest.approx(38_000.0)
    assert math.isinf(gd_threshold(0.0))
    with pytest.raises(TypeError, match="param_groups"):
        stability_threshold(object())
