"""Per-step signals against their own history: the loss's health, and the excursions of
the gradient norm, the update norm and Adam's moment ratio. Pure floats, O(1) per step.

- The loss: its short average (weight ``smoothing``) over its running minimum. At
  ``loss_excursion`` × (widened by the noise) the job is in a loss excursion
  (``unstable``); on a smooth curve sooner, at ``noise_widths`` widths of its own step
  noise (``LossHealth.excursion_limit``); until it is back under ``damage`` × its best it
  stays out of ``stable`` (a job sitting at twice its best loss is not healthy, whatever
  its curvature says).
- The others: a short average of log(x) over a slow baseline of log(x) (weight
  ``baseline_rate``), as a ratio. What each one says before a spike, and the papers
  behind it, is in ``client/signals.py``. The baseline does not learn while the short
  average is above the alarm ratio, so an excursion does not become the new normal;
  a ratio counts only after ``warm`` steps of history and after ``persist`` steps in a
  row over its threshold (one noisy step is not a warning).

Each average advances one step at a time (``update``) or a block at a time in two
halves, as optax pairs ``init``/``update``: ``scan(values)`` computes the average after
every step of the block into arrays and changes nothing; ``commit(scan, m)`` takes the
state after the first ``m`` of them. The forecast scans a block, finds the first step at
which anything could happen, and commits the steps before it (``window.py``). The scans
repeat the scalar updates' products and sums in their order, so both paths give the same
floats to the bit (tests/test_forecast_batch.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from edgewatch.monitor.settings import PredictorSettings

if TYPE_CHECKING:
    import numpy as np

# The scans import NumPy and SciPy (window.py) at their first use: the training process
# imports the float-only forecast and never pays for them.


def per_lr(update_norm: float | None, lr: float) -> float | None:
    """‖Δθ‖/η: the update's size with the LR's own rise or decay taken out (the plan and
    the crossing forecast speak for those), what the update-norm precursor follows."""
    return update_norm / lr if update_norm is not None and lr > 0 else None


def _exp(x: float) -> float:
    """exp, +inf past float range (a diverging loss has a log-ratio of hundreds)."""
    return math.exp(x) if x < 709.0 else math.inf


class LossHealth:
    """The loss against its own history, in logs: a short average (weight ``fast``) over
    the running minimum of a slow one (weight ``slow``), with the loss's own noise (the
    slow average of |Δ log loss| from step to step, which a level shift moves once, not
    for as long as the averages take to catch up) widening the band: a minibatch loss near
    zero moves by tens of percent from batch to batch, a full-batch loss by nothing, and
    the same 1.6× cannot mean trouble in both (bench/RESULTS.md: healthy minibatch runs read
    ``unstable``). Losses that are not positive are not followed (a ratio means nothing)."""

    def __init__(
        self,
        fast: float,
        slow: float,
        band: float,
        *,
        excursion: float = 1.3,
        noise_widths: float = math.inf,
        floor: float = 1.0,
    ) -> None:
        self.fast, self.slow, self.band = fast, slow, band
        self.log_excursion = math.log(excursion)
        self.noise_widths = noise_widths
        self.log_floor = math.log(floor)
        self.seen = 0
        self.short = self.mean = self.spread = self.last = 0.0
        self.floor = math.inf

    @classmethod
    def from_settings(cls, s: PredictorSettings) -> LossHealth:
        return cls(
            s.loss_smoothing,
            s.baseline_rate,
            s.noise_band,
            excursion=s.loss_excursion,
            noise_widths=s.loss_noise_widths,
            floor=s.loss_excursion_floor,
        )

    def update(self, loss: float) -> None:
        if not (loss > 0 and math.isfinite(loss)):
            return
        x = math.log(loss)
        if self.seen == 0:
            self.short = self.mean = x
        else:
            self.short = self.fast * x + (1 - self.fast) * self.short
            self.spread = self.slow * abs(x - self.last) + (1 - self.slow) * self.spread
            self.mean = self.slow * x + (1 - self.slow) * self.mean
        self.last = x
        self.floor = min(self.floor, self.mean)
        self.seen += 1

    def over(self, ratio: float) -> bool:
        """Whether the short average is ``ratio`` × its running minimum, beyond the noise."""
        return (
            self.seen > 0 and self.short - self.floor >= math.log(ratio) + self.band * self.spread
        )

    def excursion_limit(self, spread: float) -> float:
        """The log-ratio over the running minimum that is an excursion, for a loss whose
        step noise is ``spread``: ``excursion`` widened by the noise, as ever; but on a smooth
        curve ``noise_widths`` × the noise already, never under ``floor``. A noisy minibatch
        loss (10–30% from step to step) keeps the first; a pretraining curve (about 1%)
        is an event at 1.1–1.2×, steps before a spike that rises over 15–20 steps reaches
        1.3× (the shape of end-of-warmup spikes in public multi-seed GPT runs;
        tests/test_loss_noise.py has synthetic ones). Written with the operations
        ``calm`` repeats on arrays, in the same order."""
        return max(
            self.log_floor,
            min(self.log_excursion + self.band * spread, self.noise_widths * spread),
        )

    def scan(self, losses: list[float]) -> LossScan:
        """``update`` over a block of positive finite losses, after each step, as arrays
        (``self`` unchanged; it must have seen a loss)."""
        import numpy as np

        from edgewatch.monitor.window import ema

        x = np.array(list(map(math.log, losses)))  # math.log: as update() takes it
        short = ema(self.fast, x, self.short)
        mean = ema(self.slow, x, self.mean)
        before = np.concatenate(([self.last], x[:-1]))
        spread = ema(self.slow, np.abs(x - before), self.spread)
        floor = np.minimum.accumulate(np.minimum(mean, self.floor))
        return LossScan(x, short, mean, spread, floor)

    def calm(self, scan: LossScan) -> Any:
        """Per step of the scan, whether it is no excursion (``spiking`` is False), with
        ``excursion_limit``'s operations in its order."""
        import numpy as np

        spread = scan.spread
        limit = np.maximum(
            self.log_floor,
            np.minimum(self.log_excursion + self.band * spread, self.noise_widths * spread),
        )
        return scan.short - scan.floor < limit

    def over_in(self, scan: LossScan, ratio: float) -> Any:
        """``over(ratio)`` after each step of the scan."""
        return scan.short - scan.floor >= math.log(ratio) + self.band * scan.spread

    def commit(self, scan: LossScan, m: int) -> None:
        """The state after the scan's first ``m`` steps (m >= 1)."""
        i = m - 1
        self.short, self.mean = float(scan.short[i]), float(scan.mean[i])
        self.spread, self.floor = float(scan.spread[i]), float(scan.floor[i])
        self.last = float(scan.x[i])
        self.seen += m

    @property
    def spiking(self) -> bool:
        """Whether the short average is an excursion over the running minimum now."""
        return self.seen > 0 and self.short - self.floor >= self.excursion_limit(self.spread)

    @property
    def ratio(self) -> float:
        """Short average over the running minimum of the slow one (1.0 before any loss)."""
        return _exp(self.short - self.floor) if self.seen else 1.0


@dataclasses.dataclass(frozen=True)
class LossScan:
    """``LossHealth`` after each step of a block: log loss and the averages, (n,) each."""

    x: np.ndarray[Any, Any]
    short: np.ndarray[Any, Any]
    mean: np.ndarray[Any, Any]
    spread: np.ndarray[Any, Any]
    floor: np.ndarray[Any, Any]


@dataclasses.dataclass(frozen=True)
class ExcursionScan:
    """``Excursion`` after each step of a block, (n,) each: ``fine`` while its baseline
    never froze and it was never over its threshold; ``sent`` False for a signal the
    client does not send (nothing changes)."""

    fine: np.ndarray[Any, Any]
    short: np.ndarray[Any, Any]
    base: np.ndarray[Any, Any]
    sent: bool


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

    @classmethod
    def from_settings(cls, threshold: float, s: PredictorSettings) -> Excursion:
        return cls(
            threshold, fast=s.loss_smoothing, slow=s.baseline_rate, warm=s.warm, persist=s.persist
        )

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

    def scan(self, values: list[float | None]) -> ExcursionScan | None:
        """``update`` over a block, after each step, as arrays (``self`` unchanged); None
        where a value is not a positive finite number or the history is empty (the block
        goes one step at a time then)."""
        import numpy as np

        from edgewatch.monitor.window import ema

        n = len(values)
        if all(v is None for v in values):  # a signal this client does not send
            return ExcursionScan(
                np.ones(n, dtype=bool), np.full(n, self.short), np.full(n, self.base), False
            )
        if self.seen == 0 or any(v is None or not (math.isfinite(v) and v > 0) for v in values):
            return None
        x = np.array([math.log(v) for v in values])  # type: ignore[arg-type]  # as update()
        short, base = ema(self.fast, x, self.short), ema(self.slow, x, self.base)
        before = np.concatenate(([self.base], base[:-1]))
        warm = self.seen + np.arange(1, n + 1) >= self.warm
        over = short - base >= self.log_threshold
        fine = (short - before < self.log_threshold) & ~(warm & over)
        return ExcursionScan(fine, short, base, True)

    def commit(self, scan: ExcursionScan, m: int) -> None:
        """The state after the scan's first ``m`` steps, all of them ``fine`` (m >= 1)."""
        if scan.sent:
            self.short, self.base = float(scan.short[m - 1]), float(scan.base[m - 1])
            self.seen += m
            self.over = 0

    @property
    def ratio(self) -> float:
        """Short average over the baseline (1.0 while the history is short)."""
        return _exp(self.short - self.base) if self.seen >= self.warm else 1.0

    @property
    def alarming(self) -> bool:
        return self.over >= self.persist and math.isfinite(self.threshold)
