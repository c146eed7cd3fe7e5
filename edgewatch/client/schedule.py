"""The planned LR: the job's own scheduler, stepped ahead on a private copy.

``attach(..., scheduler=...)`` takes any ``torch.optim.lr_scheduler.LRScheduler``
(SequentialLR, ChainedScheduler, OneCycleLR, CosineAnnealingWarmRestarts, LambdaLR and
HF's ``get_*_schedule_with_warmup``, which are LambdaLRs), or a function from step
number to LR. ReduceLROnPlateau follows a metric, not a plan, and gives none.

Without disturbing the real scheduler: on the training thread, ``snapshot()`` deep-copies
the scheduler with its optimizer swapped for a stand-in that holds copies of the param
groups and no parameters (``copy.deepcopy``'s memo maps the real optimizer to the
stand-in, so nested schedulers follow). The copy is then stepped PLAN_STEPS times on the
sender thread, where its cost does not fall on the training loop.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger("edgewatch.client")

PLAN_STEPS = 4096
"""How far ahead a plan reaches; a new one is made once a quarter of it is left."""
REPLAN_BEFORE_END = PLAN_STEPS // 4


@dataclasses.dataclass
class Lookahead:
    """A private copy of the schedule from ``first_step`` on; ``lrs()`` on any thread."""

    first_step: int
    source: str
    _next: Callable[[], float]
    _current: float
    _report_end: Callable[[int, Exception], None] | None = None
    ended: bool = False
    """The schedule raised before ``count`` LRs: the plan ends where it stopped."""

    def lrs(self, count: int = PLAN_STEPS) -> list[float]:
        """The next ``count`` LRs, or fewer where the schedule raises: a function written
        for the run's length (a nanoGPT-style ``get_lr`` without its guard past
        ``lr_decay_iters`` divides by zero there) plans up to the run's end, not nothing."""
        out = [self._current]
        for _ in range(count - 1):
            try:
                out.append(self._next())
            except Exception as exc:
                self.ended = True
                if self._report_end is not None:
                    self._report_end(self.first_step + len(out), exc)
                break
        return out


class _StandIn(torch.optim.Optimizer):
    """What the copied scheduler steps: the param groups' hyper-parameters, no tensors."""

    def __init__(self, real: torch.optim.Optimizer) -> None:
        dummy = torch.zeros(1)
        groups = [
            {key: copy.deepcopy(value) for key, value in group.items() if key != "params"}
            for group in real.param_groups
        ]
        # Optimizer.__init__ would validate and count tensors; the groups are all we need.
        self.defaults = dict(real.defaults)
        self.param_groups = [dict(group, params=[dummy]) for group in groups]
        self.state = collections.defaultdict(dict)
        self._opt_called = True  # the scheduler's "step before optimizer.step" check

    def step(self, closure: Any = None) -> Any:
        return None

    step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]


class PlanSource:
    """Makes :class:`Lookahead` snapshots of a scheduler or of a step -> LR function."""

    def __init__(self, scheduler: Any, optimizer: torch.optim.Optimizer) -> None:
        self.scheduler = scheduler
        self.optimizer = optimizer
        self.is_function = callable(scheduler) and not hasattr(scheduler, "state_dict")
        self.source = (
            f"function {getattr(scheduler, '__name__', type(scheduler).__name__)}"
            if self.is_function
            else type(scheduler).__name__
        )
        self._told_end = False

    @classmethod
    def create(cls, scheduler: Any, optimizer: torch.optim.Optimizer) -> PlanSource | None:
        """A source, or None (logged) for a scheduler with no plan to look ahead at."""
        if scheduler is None:
            return None
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            log.info("edgewatch: ReduceLROnPlateau follows a metric; no LR plan is sent")
            return None
        if not (callable(scheduler) or hasattr(scheduler, "get_last_lr")):
            raise TypeError(
                "scheduler must be a torch LR scheduler or a function step -> lr, "
                f"got {type(scheduler).__name__}"
            )
        return cls(scheduler, optimizer)

    def snapshot(self, first_step: int) -> Lookahead:
        """The schedule from ``first_step`` (the next optimizer step) on. Training thread."""
        if self.is_function:
            fn = self.scheduler
            counter = iter(range(first_step + 1, first_step + 10 * PLAN_STEPS))
            return Lookahead(
                first_step,
                self.source,
                lambda: float(fn(next(counter))),
                float(fn(first_step)),
                self.ended_at,
            )
        stand_in = _StandIn(self.optimizer)
        clone = copy.deepcopy(self.scheduler, memo={id(self.optimizer): stand_in})
        group = stand_in.param_groups[0]

        def advance() -> float:
            clone.step()
            return float(group["lr"])

        return Lookahead(first_step, self.source, advance, float(group["lr"]), self.ended_at)

    def ended_at(self, step: int, exc: Exception) -> None:
        """Say once that the schedule raised when stepped ahead to ``step``. Sender thread."""
        if not self._told_end:
            self._told_end = True
            log.warning(
                "edgewatch: the LR schedule (%s) raised %s: %s when looked ahead to step %d; "
                "the LR plan sent ends at step %d (past the run's end, this is expected)",
                self.source,
                type(exc).__name__,
                exc,
                step,
                step - 1,
            )
