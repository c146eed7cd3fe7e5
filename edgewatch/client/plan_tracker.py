"""Which LR plan the daemon holds, and when it needs a new one: owned by the training
thread, which alone writes its fields.

The sender thread reports what it learns (the plan it stepped ahead and sent; the LR in
force at the last step of each chunk, read back as a float) by appending to ``news``, a
deque the training thread drains; appends and pops of a deque are atomic, so nothing is
written from two threads.

    training thread: wanted? --> snapshot the schedule --> PlanItem to the sender
    sender thread:   PlanItem --> Plan record, news.append(PlanSent(...))
                     StepChunk --> Steps, news.append(LRSeen(...))
    training thread: drain news: a new plan in force; the LR off the plan or the plan
                     running out --> wanted
"""

from __future__ import annotations

import collections
from typing import NamedTuple, TypeAlias

from edgewatch.client.schedule import REPLAN_BEFORE_END
from edgewatch.monitor.plan import LRPlan, lr_moved


class PlanSent(NamedTuple):
    plan: LRPlan
    ends_run: bool  # the schedule ended inside the plan: no plan goes further


class LRSeen(NamedTuple):
    step: int  # the last step of a chunk
    lr: float  # the LR in force at it


News: TypeAlias = PlanSent | LRSeen


class PlanTracker:
    """The plan sent last and whether a new one is wanted (at first: yes)."""

    def __init__(self) -> None:
        # Bounded: if the training thread stops draining (the schedule failed to copy),
        # the oldest news goes, never memory.
        self.news: collections.deque[News] = collections.deque(maxlen=1024)
        self.plan: LRPlan | None = None  # the LR plan sent last
        self.ends_run = False  # the schedule raised past the plan's end
        self.wanted = True  # send a (new) plan
        self.pending = False  # a plan is on its way to the sender, not yet framed

    def due(self) -> bool:
        """Whether a plan should be sent now (drains the sender's news first)."""
        news = self.news
        while news:
            item = news.popleft()
            if isinstance(item, PlanSent):
                self.plan, self.ends_run, self.pending = item.plan, item.ends_run, False
            else:
                self._check(item.step, item.lr)
        return self.wanted

    def sending(self) -> None:
        self.wanted, self.pending = False, True

    def failed(self) -> None:
        self.pending = False

    def _check(self, step: int, lr: float) -> None:
        """Ask for a new plan when the LR has left this one or it is running out."""
        plan = self.plan
        if plan is None or self.wanted or self.pending:
            return  # a new plan is on its way: these rows are judged against it
        running_out = not self.ends_run and step >= plan.end - REPLAN_BEFORE_END
        if running_out or lr_moved(lr, plan.at(step)):
            self.wanted = True
