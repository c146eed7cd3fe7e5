"""Per-step signals against their own history: the loss's health, and the excursions of
the gradient norm, the update norm and Adam's moment ratio. Pure floats, O(1) per step.

- The loss: its short average (weight ``smoothing``) over its running minimum. At
  ``loss_excursion`` × the job is in a loss excursion (``unstable``); until it is back
  under ``damage`` × its best it stays out of ``stable`` (a job sitting at twice its
  best loss is not healthy, whatever its curvature says).
- The others: a short average of log(x) over a slow baseline of log(x) (weight
  ``baseline_rate``), as a ratio. What each one says before a spike, and the papers
  behind it, is in ``client/signals.py``. The baseline does not learn while the short
  average is above the alarm ratio, so an excursion does not become the new normal;
  a ratio counts only after ``warm`` steps of history and after ``persist`` steps in a
  row over its threshold (one noisy step is not a warning).
"""

from __future__ import annotations

import math


class LossHealth:
    def __init__(self, smoothing: float) -> None:
        self.smoothing = smoothing
        self.average: float | None = None
        self.floor = math.inf

    def update(self, loss: float) -> None:
        a = self.smoothing
        self.average = loss if self.average is None else a * loss + (1 - a) * self.average
        self.floor = min(self.floor, self.average)

    @property
    def ratio(self) -> float:
        """Short average over its running minimum (1.0 until there is one, or for losses
        that are not positive, where a ratio means nothing)."""
        if self.average is None or not self.floor > 0:
            return 1.0
        return self.average / self.floor


class Excursion:
    """One positive per-step signal over its own slow baseline."""

    def __init__(self, threshold: float, *, fast: float, slow: float, warm: int, persist: int):
        self.threshold = threshold
        self.log_threshold = math.log(threshold)  # compared in logs: no exp per step
        self.fast, self.slow = fast, slow
        self.warm, self.persist = warm, persist
        self.seen = 0
        self.short = self.base = 0.0
        self.over = 0  # consecutive steps over the threshold

    def update(self, value: float | None) -> None:
        if value is None or not (math.isfinite(value) and value > 0):
            return
        x = math.log(value)
        if self.seen == 0:
            self.short = self.base = x
        else:
            self.short = self.fast * x + (1 - self.fast) * self.short
            if self.short - self.base < self.log_threshold:
                self.base = self.slow * x + (1 - self.slow) * self.base
        self.seen += 1
        over = self.seen >= self.warm and self.short - self.base >= self.log_threshold
        self.over = self.over + 1 if over else 0

    @property
    def ratio(self) -> float:
        """Short average over the baseline (1.0 while the history is short)."""
        return math.exp(self.short - self.base) if self.seen >= self.warm else 1.0

    @property
    def alarming(self) -> bool:
        return self.over >= self.persist and math.isfinite(self.threshold)
