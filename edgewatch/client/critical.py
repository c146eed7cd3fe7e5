"""The forward-only critical sharpness during training, when asked for (``critical=True``
of ``attach``): the step size along the last update at which the probe's loss stops
falling (``monitor/line_search.py``; Kalra et al. 2026, arXiv 2601.16979). Off by
default: it added nothing on runs it was not tuned on (bench/RESULTS.md, "What each
signal adds"). It has its own share of the curvature budget, CRITICAL_SHARE of it,
charged the seconds each search took (``pacing.Spending``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from edgewatch.client.pacing import Spending
from edgewatch.client.readings import critical_fields
from edgewatch.monitor.direction import update_direction
from edgewatch.monitor.line_search import CriticalSharpness, critical_sharpness

CRITICAL_SHARE = 0.3  # of the budget, when asked for
CRITICAL_FORWARDS = 5  # probe forwards per critical-sharpness search


class CriticalSearches:
    """When to search (``due``) and the search (``measure``), within ``share`` of the
    run's step times (0: never)."""

    def __init__(
        self,
        target: torch.nn.Module | list[torch.Tensor],
        params: list[torch.Tensor],
        optimizer: torch.optim.Optimizer,
        probe: Callable[[], torch.Tensor],
        share: float,
        spending: Spending,
    ) -> None:
        self.target = target
        self.params = params
        self.optimizer = optimizer
        self.probe = probe
        self.share = share
        self.spending = spending
        self.cost = 0.0  # running mean of a search's seconds
        self.last = -(10**9)  # step of the last search
        self.searches = 0  # run
        self.found = 0  # of which found a step (each sent)

    def due(self, step: int, steps: int) -> bool:
        """A search is affordable at ``step``, ``steps`` training steps into the run."""
        if self.share <= 0:
            return False
        spent = self.spending.critical
        cost = self.spending.in_steps(self.cost)
        paced = (step - self.last) * self.share >= cost
        return paced and spent + cost <= self.share * steps

    def run(self, step: int, lr: float) -> tuple[CriticalSharpness | None, float]:
        """The critical sharpness along the last update (None when there is no update),
        and the search's seconds."""
        start = time.perf_counter()
        direction = update_direction(self.optimizer, self.params)
        result = None
        if direction is not None and lr > 0:
            result = critical_sharpness(
                self.target, self.probe, direction, lr, max_forwards=CRITICAL_FORWARDS
            )
        seconds = time.perf_counter() - start
        self.spending.charge(seconds, critical=True)
        before = self.cost  # a running mean, from the first search's seconds
        self.cost = 0.7 * before + 0.3 * seconds if before else seconds
        self.last = step
        self.searches += 1
        return result, seconds

    def measure(self, step: int, lr: float) -> dict[str, Any] | None:
        """A search; the fields of its Sharpness record when it found a step."""
        found, seconds = self.run(step, lr)
        if found is None or not math.isfinite(found.lambda_c):
            return None  # no update yet, or no rise within the search: nothing to say
        self.found += 1
        return critical_fields(found, seconds, lr)
