"""The state ladder of a job: which state the evidence moves it to, with hysteresis.
Pure; no floats to speak of.

States, escalating only:

- ``diverged``: a non-finite loss or gradient norm;
- ``unstable``: the crossing is now, or the loss is in an excursion over its running
  minimum (``precursors.LossHealth``);
- ``approaching``: the crossing is within ``horizon`` steps, or a precursor has held
  over its threshold for ``persist`` steps;
- ``stable``: otherwise, once ``recover_steps`` steps in a row have been quiet and the
  loss is back under ``damage`` × its best.

The hysteresis is what makes the alerts usable (the demo's one warmup once raised 11
state changes). A state only rises, step by step (stable → approaching → unstable →
diverged, skipping what is skipped); it falls only to ``stable``, and only after the
quiet stretch: so one event raises at most a warning, then ``unstable`` or
``diverged``, then one recovery.
"""

from __future__ import annotations

from edgewatch.monitor.settings import State

STATES: tuple[State, ...] = ("stable", "approaching", "unstable", "diverged")
RANK = {state: i for i, state in enumerate(STATES)}
ALARM_STATES = frozenset({"approaching", "unstable", "diverged"})
DAMAGED_STATES = frozenset({"unstable", "diverged"})
"""The states of an episode's onset: the job has been hurt, not only warned."""


def climb(
    state: State, wanted: State, damaged: bool, quiet: int, recover_steps: int
) -> tuple[State | None, int]:
    """The state to move to (None: stay where it is) and the count of quiet steps after
    this one. ``damaged``: the loss is still over ``damage`` × its best, which keeps an
    unstable job from counting quiet steps."""
    if RANK[wanted] > RANK[state]:
        return wanted, 0
    if wanted != "stable" or damaged:
        return None, 0
    quiet += 1
    if state == "stable" or quiet < recover_steps:
        return None, quiet
    return "stable", 0
