"""The planned LR of the coming steps (``PlanView``), and which of its rises want a λ_max
estimate before them (``Rises``): the ``rise`` reason of ``client/curvature.py``.

The daemon multiplies the last usable estimate by the *planned* LR, so an estimate must
precede each rise of the plan by the daemon's horizon, or the crossing it would show is
seen too late. Training thread only; a few µs a step, and only when a probe is given.
"""

from __future__ import annotations

import logging
from typing import Literal

from edgewatch.client.schedule import PlanSource
from edgewatch.monitor.plan import lr_moved

log = logging.getLogger("edgewatch.client")

PLAN_AHEAD = 1024  # steps of planned LR kept in view (~3 ms to step a torch scheduler)
REPLAN_GAP = 64  # steps between new views taken because the LR left the plan
RISE = 1.5  # a planned LR this much above the one last vouched for wants an estimate
SUMMIT = 1.01  # a peak this much above the LR in force is a rise into it


class PlanView:
    """The planned LR of the next PLAN_AHEAD steps, from a private snapshot of the job's
    schedule (``client/schedule.py``) stepped ahead here, on the training thread: the
    schedule must know a rise before it comes, whatever the sender thread is doing."""

    def __init__(self, source: PlanSource, total_steps: int | None = None) -> None:
        self.source = source
        # The run's last step, where known: the view is not read past it. Its cost is
        # charged to the curvature budget, and a short run of millisecond steps would
        # otherwise pay for a thousand steps it never takes before its first estimate.
        self.last_step = total_steps - 1 if total_steps else None
        self.first = 0  # the step of lrs[0]
        self.lrs: list[float] = []
        self.summits: list[int] = []  # per index, that of the highest LR from it on
        self.ended = False  # the schedule raised past the view's end (the run ends there)
        self.broken = False

    def update(self, step: int, lr: float) -> bool:
        """Look ahead again when the view runs short or the LR left it; whether it did."""
        if self.broken:
            return False
        planned = self.at(step)
        end = self.first + len(self.lrs)
        to_the_end = self.last_step is not None and step < end and end > self.last_step
        short = not self.ended and not to_the_end and step + PLAN_AHEAD // 2 >= end
        # An LR set by hand off the schedule's plan each step must not cost a snapshot
        # each step: the schedule is looked at again at most every REPLAN_GAP steps.
        moved = planned is not None and lr_moved(lr, planned) and step - self.first >= REPLAN_GAP
        if self.lrs and not short and not moved:
            return False
        try:
            lookahead = self.source.snapshot(step + 1)
            self.lrs = [lr, *lookahead.lrs(self._ahead(step))]  # this step's LR, then the plan
        except Exception as exc:
            self.broken = True  # a schedule that cannot be copied will not copy next time
            log.warning("edgewatch: no LR plan for the curvature schedule: %r", exc)
            return False
        self.first, self.ended = step, lookahead.ended
        self.summits = _summits(self.lrs)
        return True

    def _ahead(self, step: int) -> int:
        """Planned LRs to read after ``step``: PLAN_AHEAD, or up to the run's last step."""
        if self.last_step is None or step >= self.last_step:
            return PLAN_AHEAD
        return min(PLAN_AHEAD, self.last_step - step)

    def at(self, step: int) -> float | None:
        i = step - self.first
        return self.lrs[i] if 0 <= i < len(self.lrs) else None

    def peak(self, first: int, last: int) -> float | None:
        """The highest planned LR in [first, last] (the view's last LR past its end)."""
        if not self.lrs:
            return None
        lo = max(first - self.first, 0)
        hi = min(last - self.first, len(self.lrs) - 1)
        return max(self.lrs[lo : hi + 1]) if lo <= hi else self.lrs[-1]

    def summit(self, step: int) -> int | None:
        """The step of the highest planned LR from ``step`` to the view's end (the
        nearest, where several are as high); None past the view."""
        i = step - self.first
        return self.first + self.summits[i] if 0 <= i < len(self.summits) else None


def _summits(lrs: list[float]) -> list[int]:
    """Per index, the index of the highest value from there on (the nearest of equals)."""
    out = [0] * len(lrs)
    best = len(lrs) - 1
    for i in range(len(lrs) - 1, -1, -1):
        if lrs[i] >= lrs[best]:
            best = i
        out[i] = best
    return out


class Rises:
    """Which planned LR rises the last λ_max estimate vouches for, and when another is
    wanted before one. Three rules:

    - **ahead**: when the planned LR within ``lead`` steps (the horizon, the estimate's
      slices and some slack) exceeds ``RISE`` × the highest LR the last estimate was
      started for, so that a crossing the sharpness already shows is forecast a
      horizon ahead: along a warmup, an estimate each time the LR has grown by half.
    - **refresh**: sharpness grows while the LR holds (progressive sharpening: ×12
      between 125 and 50 steps before a ×30 jump of a heavy-ball CNN, README "Budget",
      ``tests/test_schedule_families.py``), so the estimate a horizon ahead of a ×30
      jump can read far below what the network will carry into it. When a rise of more
      than ``RISE`` × the LR in force is within ``lead`` − half a horizon, and the last
      estimate is over half a horizon old, one more is taken: the warning then comes at
      least half a horizon ahead whatever the sharpening in between. Once per rise.
    - **summit**: the highest LR of the plan in view, reached by a gradual rise (the end
      of a warmup), gets an estimate started within a horizon before it, once the last
      is over half a horizon old: the sharpness the peak meets is read where it counts. (An earlier
      rule, "once the last estimate is older than the horizon any rise wants one",
      spent a long warmup's whole allowance on an estimate every horizon where the LR
      was lowest, and left its end unmeasured: bench/RESULTS.md, "make bench-client at
      3,000 steps".)

    ``pending`` says how many estimates these rules will still want over the plan in
    view (the same rules, walked over it once per new estimate or new view): the
    schedule keeps their cost back from the cadence and the stirs, so that a warmup's
    last stretch is not left unmeasured by what was spent before it.
    """

    def __init__(self, view: PlanView | None, horizon: int) -> None:
        self.view = view
        self.horizon = horizon
        self.vouched = 0.0  # the highest planned LR the last estimate was started for
        self.refresh_wanted = False  # the last estimate was started ahead of a sharp rise
        self.started_at = -(10**9)  # the step the last estimate started at
        self.lead = horizon
        self.wanted: list[int] = []  # steps the rules will start estimates at, in view

    def peak(self, first: int, last: int) -> float | None:
        return self.view.peak(first, last) if self.view is not None else None

    def started(self, step: int, lr: float | None, lead: int, refresh: bool = False) -> None:
        """An estimate starts at ``step`` (LR in force ``lr``), for the ``lead`` steps on;
        ``refresh``: it is the refresh ``due`` asked for. Any other wants a refresh when a
        sharp rise is in view beyond half a horizon from here."""
        now = lr or 0.0
        peak = max(self.peak(step, step + lead) or 0.0, now)
        near = self.peak(step, step + lead - self.horizon // 2) or 0.0
        self.vouched, self.started_at, self.lead = peak, step, lead
        sharp_beyond = peak > RISE * now and not near > RISE * now
        self.refresh_wanted = sharp_beyond and not refresh
        self.replanned(step)

    def due(
        self, step: int, lr: float | None, lead: int, age: int, affordable: int
    ) -> Literal["ahead", "refresh"] | None:
        """Which estimate a rise wants at ``step``, if any. ``age``: steps since the last
        estimate finished; ``affordable``: estimates the allowance still covers. Where it
        covers one, a sharp rise gets the late one only, within half a horizon of it: the
        one that sees the sharpness the rise will meet."""
        now = lr or 0.0
        far = self.peak(step, step + lead)
        if far is None:
            return None
        half = self.horizon // 2
        near = self.peak(step, step + lead - half) or 0.0
        sharp = far > RISE * now
        if far > RISE * self.vouched and (affordable >= 2 or not sharp):
            return "ahead"
        if near > RISE * self.vouched:
            return "ahead"
        if self.refresh_wanted and age >= half and near > RISE * now:
            return "refresh"
        if age >= half and self._summit_due(step, now):
            return "ahead"
        return None

    def first_waits(self, step: int, lr: float | None, lead: int) -> bool:
        """Whether a run's first estimate (heavy ball, SGD) waits for a sharp rise close
        ahead: the plan holds the LR in force for the next ``lead`` − half a horizon steps,
        then rises over RISE × it within two horizons more. It then starts where ``due``
        starts the late estimate for such a rise. The sharpness such a rise meets is not
        the one at the start: a heavy-ball CNN's λ_max went from 0.66 at step 3 to 25.6
        at step 176, 74 steps before its jump (bench/RESULTS.md, "Instability benchmark
        v10"), and at the default budget a short run's allowance covers one estimate."""
        if not lr:
            return False
        near = self.peak(step, step + lead - self.horizon // 2)
        far = self.peak(step, step + lead + 2 * self.horizon)
        return near is not None and far is not None and near <= RISE * lr < far

    def _summit_due(self, step: int, now: float) -> bool:
        """The plan's highest LR in view comes within a horizon, is a gradual rise from
        ``now`` (a sharp one, more than RISE, is the other rules': where the allowance
        covers one estimate, the late one within half a horizon of it), and no estimate
        has started within a horizon before it."""
        summit = self.view.summit(step) if self.view is not None else None
        if summit is None or summit - step > self.horizon:
            return False
        top = self.view.lrs[summit - self.view.first]  # type: ignore[union-attr]
        gradual = SUMMIT * now < top <= RISE * now
        return gradual and self.started_at < summit - self.horizon

    def replanned(self, step: int) -> None:
        """Walk the plan in view with the rules above, from an estimate started at
        ``step`` (or a new view), and keep the steps they will want estimates at."""
        self.wanted = []
        view = self.view
        if view is None or not view.lrs:
            return
        lrs, base, lead, half = view.lrs, view.first, self.lead, self.horizon // 2
        vouched, last = self.vouched, self.started_at
        i = j = max(step - base + 1, 0)
        while True:
            while j < len(lrs) and not lrs[j] > RISE * vouched:
                j += 1
            if j >= len(lrs):
                break
            at = max(j - lead, i)  # where "ahead" sees it
            vouched = max(lrs[at : at + lead + 1])
            near = max(lrs[at : at + lead - half + 1])
            self.wanted.append(base + at)
            last = base + at
            if vouched > RISE * lrs[at] and not near > RISE * lrs[at]:
                last = base + at + half  # its refresh
                self.wanted.append(last)
            i, j = at + 1, max(j + 1, at + 1)
        summit = view.summit(max(step + 1, base))
        if summit is not None and last < summit - self.horizon:
            rise_from = lrs[max(summit - self.horizon, step + 1) - base]  # within the view
            if SUMMIT * rise_from < lrs[summit - base] <= RISE * rise_from:
                self.wanted.append(summit - self.horizon)

    def pending(self, step: int) -> int:
        """Estimates still wanted by the rises in view (an overdue one counts once): to
        hold back from the cadence and the stirs."""
        coming = sum(1 for at in self.wanted if at >= step)
        overdue = len(self.wanted) > coming
        return coming + overdue + self.refresh_wanted
