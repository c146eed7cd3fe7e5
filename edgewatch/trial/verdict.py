"""The verdict on one trial, from floats only: safe, borderline or unsafe.

The ratio is sharpness × LR over the optimizer's constant (2 for GD, 2 + 2β heavy ball,
38 for Adam at β1 0.9: Cohen et al. 2021, arXiv 2103.00065; 2022, arXiv 2207.14484), so
1.0 is the edge of stability at the LR the step trained at. The loss is judged as
bench/instability/scoring.py labels runs: against its running minimum.

- **unsafe**: the loss ran away (non-finite, or ``RUNAWAY`` × its minimum without coming
  back), or spiked to ``spike`` × its minimum (a MAJOR event in the benchmark's terms,
  even if it came back: a catapult that large costs the run), or, for SGD and heavy
  ball, the ratio went past ``hot`` (an LR that far over the edge is not survived for
  long).
- **borderline**: the loss rose to 1.2 × its minimum (a small catapult the network
  flattened out of: Kalra & Barkeshli 2024, arXiv 2406.09405); for SGD and heavy ball,
  the ratio reached ``edge`` (0.9: a plan at 0.95 of the edge has no room for the noise
  of a real run), or the sharpness is growing so fast at the trial's end that, at its
  rate over the trial's last quarter, the ratio reaches the edge within ``sharpening``
  more steps (progressive sharpening, Cohen et al. 2021: the trial is short, the job is
  not). A forecast, so a caution and not a failure: full-batch GD reaches the edge and
  trains on there (Cohen et al. 2021), and in the benchmark the rule flagged healthy GD
  runs as often as failing SGD ones (``bench/RESULTS.md``).
- For Adam-type optimizers the ratio is no verdict: the loss alone judges. They train
  with the preconditioned sharpness at or over its edge (Cohen et al. 2022; 5 of the
  benchmark's 34 event-free Adam runs read 1.8-82× it, README "Forecast"); a
  newcomer's healthy AdamW plan read 11× it, a healthy char_rnn trial 12,000× it, and
  every Adam trial that ran past 3× it before an event showed it in its loss too
  (``bench/RESULTS.md``).
- **safe**: neither.

For Adam-type optimizers the estimates of the first ``settle`` trial steps are left out:
the second-moment estimate has not settled and the preconditioned ratio is tens of times
what it becomes (README, "Forecast"); the loss still judges those steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from edgewatch.monitor.crossing import fit_line

EDGE = 0.9
HOT = 3.0
SPIKE = 2.0
SMALL = 1.2
RUNAWAY = 10.0
SHARPENING = 100.0  # steps (updates) past the trial's end a growing ratio is followed
LAST_QUARTER = 0.75  # the growth rate is fitted on the estimates after this share
MIN_FIT = 4  # estimates at least, for a growth rate


@dataclasses.dataclass(frozen=True)
class Rules:
    """The verdict's thresholds (tuned leaving one family out: bench/instability/preflight.py)."""

    edge: float = EDGE
    hot: float = HOT
    spike: float = SPIKE
    settle: int = 0
    """Trial steps whose estimates are left out (Adam-type: 50)."""
    sharpening: float = SHARPENING
    """Updates past the trial's end within which a growing ratio reaching the edge makes
    the plan borderline (0: the growth is not followed)."""
    preconditioned: bool = False
    """An Adam-type optimizer's ratio: reported, never judged (the loss judges)."""


@dataclasses.dataclass(frozen=True)
class Judgement:
    verdict: str
    reason: str
    max_ratio: float
    """The highest counted ratio (NaN: no estimate counted)."""
    peak_ratio: float
    """The ratio measured at the plan's peak LR (the estimates at ≥ 0.95 of it)."""
    crossing: tuple[int, float, float] | None
    """(plan step, LR, ratio) of the first counted estimate at or over 1.0."""
    trouble: int | None
    """The trial step where things first went wrong (a crossing or the loss at 1.2×)."""
    loss_peak: float
    """The loss's highest ratio to its running minimum."""
    recovered: bool
    """After its highest point the loss came back under 1.2 × its minimum."""
    flattened: bool | None
    """After a crossing, a later estimate back under 1.0 (None: no crossing)."""
    to_edge: float | None = None
    """Updates past the trial's end until the ratio reaches 1.0 at its growth rate over
    the trial's last quarter (None: not growing, already at the edge, or Adam-type)."""
    ratio_judged: bool = True
    """The crossing counts as trouble (False for Adam-type optimizers: reported only)."""


def judge(
    losses: Sequence[float],
    estimates: Sequence[tuple[int, int, float, float]],
    constant: float,
    rules: Rules,
    stopped: bool = False,
) -> Judgement:
    """``estimates``: (trial step, plan step, LR, sharpness); ``constant``: the threshold
    times the LR (2 for GD, 38 for Adam β1 0.9)."""
    counted = [(i, s, lr, v * lr / constant) for i, s, lr, v in estimates if i >= rules.settle]
    ratios = [r for *_, r in counted if math.isfinite(r)]
    max_ratio = max(ratios, default=math.nan)
    top = max((lr for _, _, lr, _ in counted), default=math.nan)
    at_peak = [r for _, _, lr, r in counted if lr >= 0.95 * top and math.isfinite(r)]
    peak_ratio = max(at_peak, default=max_ratio)
    over = [c for c in counted if c[3] >= 1.0]
    crossing = (over[0][1], over[0][2], over[0][3]) if over else None
    flattened = None
    if over:
        flattened = any(r < 1.0 for i, _, _, r in counted if i > over[0][0])
    loss_peak, recovered, small_at = _loss_health(losses)
    pre = rules.preconditioned  # Adam-type: the ratio is reported, the loss judges
    growth = [(i, lr, r) for i, _, lr, r in counted if math.isfinite(r) and r > 0 and lr > 0]
    to_edge = None if pre else _steps_to_edge(growth)
    crossed = over[0][0] if over and not pre else None
    trouble_at = [t for t in (small_at, crossed) if t is not None]
    trouble = min(trouble_at) if trouble_at else None
    finite_end = bool(losses) and math.isfinite(losses[-1])
    ratio_text = f"sharpness × LR reached {max_ratio:.3g}× the edge"
    cautions = []
    if loss_peak >= SMALL:
        cautions.append(f"the loss rose to {loss_peak:.3g}× its best")
    if not pre and max_ratio >= rules.edge:
        cautions.append(ratio_text)
    if to_edge is not None and to_edge <= rules.sharpening:
        cautions.append(
            f"sharpness × LR is {ratios[-1]:.3g}× the edge and growing: at its rate over the "
            f"trial's last quarter it reaches the edge {to_edge:.0f} steps after the trial"
        )
    if stopped or not finite_end or (loss_peak >= RUNAWAY and not recovered):
        verdict, reason = "unsafe", "the loss ran away"
    elif loss_peak >= rules.spike:
        how = "and came back" if recovered else "and had not come back at the trial's end"
        verdict, reason = "unsafe", f"the loss spiked to {loss_peak:.3g}× its best {how}"
    elif not pre and max_ratio >= rules.hot:
        verdict, reason = "unsafe", ratio_text
    elif cautions:
        verdict, reason = "borderline", "; ".join(cautions)
    else:
        verdict = "safe"
        reason = f"sharpness × LR stayed at or under {max_ratio:.3g}× the edge"
        if math.isnan(max_ratio):
            reason = "the loss stayed healthy (no sharpness estimate counted)"
    return Judgement(
        verdict, reason, max_ratio, peak_ratio, crossing, trouble, loss_peak, recovered,
        flattened, to_edge, not pre,
    )  # fmt: skip


def _steps_to_edge(ratios: Sequence[tuple[int, float, float]]) -> float | None:
    """Steps after the last estimate until the ratio reaches 1.0 at the last LR, the
    sharpness growing at the rate a least-squares line through log(ratio / LR) over the
    last quarter of the trial gives (the LR taken out: a warmup's rise is no growth)."""
    if len(ratios) < MIN_FIT:
        return None
    start = LAST_QUARTER * ratios[-1][0]
    tail = [(i, math.log(r / lr)) for i, lr, r in ratios if i >= start]
    if len(tail) < MIN_FIT:
        tail = [(i, math.log(r / lr)) for i, lr, r in ratios[-MIN_FIT:]]
    line = fit_line([i for i, _ in tail], [y for _, y in tail])
    if line is None:
        return None
    # The line's value at the last estimate, not the noisy estimate's, at the last LR.
    last = line.at(tail[-1][0]) + math.log(ratios[-1][1])
    if line.slope <= 0 or last >= 0:
        return None
    return -last / line.slope


def _loss_health(losses: Sequence[float]) -> tuple[float, bool, int | None]:
    """(highest ratio to the running minimum, whether the loss came back under SMALL ×
    the minimum after it, the first step at SMALL × the minimum)."""
    best, peak, peak_at, first_small = math.inf, 1.0, -1, None
    for t, v in enumerate(losses):
        if not math.isfinite(v):
            return math.inf, False, first_small if first_small is not None else t
        if best < math.inf and best > 0:
            r = v / best
            if r > peak:
                peak, peak_at = r, t
            if r >= SMALL and first_small is None:
                first_small = t
        best = min(best, v)
    if peak_at < 0:
        return 1.0, True, None
    floor = min(losses[: peak_at + 1])
    recovered = any(v < SMALL * floor for v in losses[peak_at + 1 :])
    return peak, recovered, first_small
