"""The planned learning rate: a piecewise-linear curve over future steps.

The client steps a private copy of the job's LR scheduler ahead and sends the result
as knots (step, lr), with straight lines between them (``compress``); the forecaster
reads the LR that will be in force at any later step from it (``LRPlan.at``). Warmup
and scheduled jumps are the commonest way into a loss spike (Kalra & Barkeshli 2024,
arXiv 2406.09405), and both are in the plan before they happen. Pure floats, no torch.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
from collections.abc import Sequence

COMPRESS_TOLERANCE = 1e-3
"""Relative LR error a straight line between two knots may make on the steps it skips."""


@dataclasses.dataclass(frozen=True)
class LRPlan:
    """Knots of the planned LR of the first parameter group; ``steps`` strictly increasing.

    Before the first knot and after the last the LR is taken as constant: the client
    plans far enough ahead (and again before the plan runs out) that this rarely matters.
    """

    steps: tuple[int, ...]
    lrs: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.steps) != len(self.lrs) or not self.steps:
            raise ValueError("an LR plan needs as many LRs as steps, at least one")
        if any(b <= a for a, b in itertools.pairwise(self.steps)):
            raise ValueError("an LR plan's steps must be strictly increasing")

    @property
    def end(self) -> int:
        return self.steps[-1]

    def at(self, step: int) -> float:
        """The planned LR at ``step``."""
        steps, lrs = self.steps, self.lrs
        i = bisect.bisect_right(steps, step)
        if i == 0:
            return lrs[0]
        if i == len(steps):
            return lrs[-1]
        s0, s1 = steps[i - 1], steps[i]
        return lrs[i - 1] + (lrs[i] - lrs[i - 1]) * (step - s0) / (s1 - s0)

    def knots_between(self, first: int, last: int) -> list[int]:
        """The knot steps inside [first, last]: where a piecewise-linear maximum can sit."""
        lo = bisect.bisect_left(self.steps, first)
        hi = bisect.bisect_right(self.steps, last)
        return list(self.steps[lo:hi])

    def peak_after(self, step: int, horizon: int) -> tuple[int, float]:
        """The step and LR of the highest planned LR in [step, step + horizon]."""
        candidates = [step, step + horizon, *self.knots_between(step, step + horizon)]
        best = max(candidates, key=lambda s: (self.at(s), -s))
        return best, self.at(best)


def lr_moved(lr: float, expected: float | None) -> bool:
    """Whether an LR is off the one expected (planned) by more than 0.1%: a plan's
    knots are kept to 0.1% (COMPRESS_TOLERANCE), so less is the plan itself."""
    if expected is None:
        return True
    return abs(lr - expected) > COMPRESS_TOLERANCE * max(abs(expected), 1e-300)


def compress(first_step: int, lrs: Sequence[float], tol: float = COMPRESS_TOLERANCE) -> LRPlan:
    """Knots for ``lrs`` (the LR at first_step, first_step + 1, ...), in one pass.

    A knot is kept where the straight line from the previous knot would miss one of the
    LRs in between by more than ``tol`` (relative): linear warmups and step schedules
    become a few knots, a cosine a few dozen. The slopes still allowed from the last knot
    narrow to a cone as points pass (each point admits the slopes that stay within tol of
    it); a point whose own slope falls outside the cone ends the segment before it.
    """
    if not lrs:
        raise ValueError("nothing to compress: no LRs")
    knots = [0]
    anchor, lo, hi = 0, -math.inf, math.inf
    for j in range(1, len(lrs)):
        run = j - anchor
        slope = (lrs[j] - lrs[anchor]) / run
        if not lo <= slope <= hi:
            knots.append(j - 1)
            anchor, lo, hi = j - 1, -math.inf, math.inf
            run = 1
        margin = tol * abs(lrs[j])
        lo = max(lo, (lrs[j] - margin - lrs[anchor]) / run)
        hi = min(hi, (lrs[j] + margin - lrs[anchor]) / run)
    if knots[-1] != len(lrs) - 1:
        knots.append(len(lrs) - 1)
    return LRPlan(tuple(first_step + k for k in knots), tuple(float(lrs[k]) for k in knots))
