"""LR plans (step -> LR in force at that step), shared by the families."""

from __future__ import annotations

import math
from collections.abc import Callable

Plan = Callable[[int], float]


def constant(lr: float) -> Plan:
    return lambda step: lr


def warmup(lr: float, steps: int) -> Plan:
    """Linear warmup over ``steps`` steps, then constant."""
    if steps <= 0:
        return constant(lr)
    return lambda step: lr * min(1.0, (step + 1) / steps)


def warmup_cosine(lr: float, warmup_steps: int, total: int, floor: float = 0.1) -> Plan:
    """Linear warmup, then a cosine decay to ``floor``·lr at ``total`` (nanoGPT's plan)."""

    def plan(step: int) -> float:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

    return plan


def jump(plan: Plan, at: int, factor: float) -> Plan:
    """``plan`` multiplied by ``factor`` from step ``at`` on (a scheduled LR jump)."""
    if factor == 1.0:
        return plan
    return lambda step: plan(step) * (factor if step >= at else 1.0)
