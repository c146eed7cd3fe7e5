"""Where the curvature schedule wants λ_max estimates before the planned LR's rises
(``client/rises.py``), walked step by step as the training thread asks, on plans given
as a step -> LR function the way ``attach(scheduler=...)`` takes one. No training: each
estimate is taken to last ESTIMATE_STEPS steps and the allowance to cover the next two.

What a user sees of it: the steps the ``rise`` estimates land on (``mon.stats``, the
sharpness chart), and that a warmup's end is measured, not left to the estimates spent
at its start (bench/RESULTS.md, "make bench-client at 3,000 steps").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from edgewatch.client.rises import PlanView, Rises
from edgewatch.client.schedule import PlanSource

HORIZON = 100
LEAD = 124  # the schedule's lead: the horizon, a warm estimate's slices and some slack
ESTIMATE_STEPS = 4
WARMUP = 1000


def walk(
    plan: Callable[[int], float], first: int, steps: int, affordable: int = 2
) -> tuple[list[int], int]:
    """The steps ``rise`` estimates start at after a first one at ``first``, and how many
    the rises in view were said to want right after that first one; ``affordable``: the
    estimates the allowance covers at each step."""
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=plan(0))
    view = PlanView(PlanSource(plan, optimizer))
    rises = Rises(view, HORIZON)
    view.update(first, plan(first))
    rises.started(first, plan(first), LEAD)
    wanted = rises.pending(first + 1)
    starts, busy_until = [], first + ESTIMATE_STEPS
    for step in range(first + 1, steps):
        if view.update(step, plan(step)):
            rises.replanned(step)
        if step < busy_until:
            continue
        why = rises.due(step, plan(step), LEAD, step - busy_until, affordable)
        if why is not None:
            rises.started(step, plan(step), LEAD, refresh=why == "refresh")
            starts.append(step)
            busy_until = step + ESTIMATE_STEPS
    return starts, wanted


def warmup_cosine(step: int) -> float:
    if step < WARMUP:
        return 1e-3 * (step + 1) / WARMUP
    return 1e-3 * 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / 2000))


def test_a_long_warmup_is_measured_as_its_lr_grows_by_half_and_within_a_horizon_of_its_peak() -> (
    None
):
    starts, wanted = walk(warmup_cosine, first=50, steps=3000)
    assert starts, "no estimate before the warmup's rises"
    assert all(step < WARMUP for step in starts)  # the cosine's fall wants none
    peak = WARMUP - 1  # the warmup's last step, the LR's highest
    assert peak - HORIZON <= starts[-1] < peak  # the peak's own estimate
    # Between two, the LR grows by about half: not an estimate every horizon where the
    # LR is lowest (which spent a 2% allowance before the warmup's last third).
    for before, after in zip([50, *starts], starts[:-1], strict=False):
        assert warmup_cosine(after + LEAD) <= 1.6 * warmup_cosine(before + LEAD)
    assert len(starts) <= 6
    # What was kept back for them is what they took.
    assert wanted == len(starts)


def jump(step: int) -> float:
    return 1e-3 if step < 250 else 3e-2


def test_a_scheduled_jump_is_measured_a_lead_ahead_and_again_within_half_a_horizon() -> None:
    starts, wanted = walk(jump, first=3, steps=400)
    assert len(starts) == wanted == 2
    ahead, refresh = starts
    assert 250 - LEAD <= ahead <= 250 - HORIZON
    assert 250 - LEAD + HORIZON // 2 <= refresh <= 250 - HORIZON // 2


def test_where_one_estimate_is_affordable_a_jump_gets_the_late_one() -> None:
    # The one that sees the sharpness the jump will meet (a heavy-ball CNN's grows x12
    # between 125 and 50 steps before it): not one a horizon ahead, whose refresh would
    # then come too late to warn 50 steps ahead.
    starts, _ = walk(jump, first=3, steps=400, affordable=1)
    assert len(starts) == 1
    assert 250 - LEAD + HORIZON // 2 <= starts[0] <= 250 - HORIZON // 2


def test_a_falling_plan_wants_no_estimate_for_rises() -> None:
    def decay(step: int) -> float:
        return 1e-3 * 0.5 * (1 + math.cos(math.pi * step / 3000))

    starts, wanted = walk(decay, first=3, steps=3000)
    assert starts == [] and wanted == 0


def test_a_run_of_known_length_reads_its_plan_once_and_no_further_than_its_end() -> None:
    """Stepping the schedule ahead is charged to the curvature budget: a 500-step run
    must not pay for the thousand steps a view of unknown length reads."""
    asked: list[int] = []

    def plan(step: int) -> float:
        asked.append(step)
        return warmup_cosine(step)

    param = torch.zeros(1, requires_grad=True)
    view = PlanView(PlanSource(plan, torch.optim.SGD([param], lr=plan(0))), total_steps=500)
    asked.clear()
    reads = [step for step in range(500) if view.update(step, warmup_cosine(step))]
    assert reads == [0]
    assert max(asked) == 499 and len(asked) <= 500
    assert view.at(499) == warmup_cosine(499)
    assert view.update(500, warmup_cosine(500))  # run past its announced end: read again
    assert view.at(600) == warmup_cosine(600)


def first_start(plan: Callable[[int], float], steps: int = 3000) -> int:
    """The step a heavy-ball run's first estimate starts at: the first step from 3 on
    (three steps price it) that does not wait for a rise."""
    param = torch.zeros(1, requires_grad=True)
    view = PlanView(PlanSource(plan, torch.optim.SGD([param], lr=plan(0))), total_steps=steps)
    rises = Rises(view, HORIZON)
    for step in range(3, steps):
        view.update(step, plan(step))
        if not rises.first_waits(step, plan(step), LEAD):
            return step
    return steps


def test_a_first_estimate_before_a_sharp_rise_over_a_flat_plan_is_the_late_one() -> None:
    """At the default budget a short run buys one estimate: over a flat plan with a jump
    close ahead it is taken where the late one for the jump would be, which sees the
    sharpness the jump meets (a heavy-ball CNN's λ_max: 0.66 at step 3, 25.6 at 176)."""
    assert 250 - LEAD + HORIZON // 2 <= first_start(jump) <= 250 - HORIZON // 2
    # Anything else starts at once: a flat plan, a warmup (a rise from the first step),
    # a decay, a jump beyond two horizons and the lead.
    assert first_start(lambda step: 1e-2) == 3
    assert first_start(warmup_cosine) == 3
    assert first_start(lambda step: 1e-2 * 0.999**step) == 3
    assert first_start(lambda step: 1e-2 * (30.0 if step >= 1000 else 1.0)) == 3
