"""Labels, baselines and scores for the instability benchmark (the issue's protocol).

Labels, from the probe loss only: an *excursion* starts where the loss reaches 1.2× its
running minimum m and ends where it falls back under 1.2·m. MAJOR: its peak reaches 2·m
and it ends (recovers). DIVERGENCE: a non-finite loss, or 10·m and no recovery. Smaller
excursions (and 2-10× ones that never recover) are not scored. The onset is the first
step of the excursion at 2·m.

Scoring: a predictor sees only the past (and the planned LR). An event is caught when an
alarm falls in [onset − 100, onset + 2]; lead = onset − the first such alarm. False
alarms: alarm episodes that start outside every window [onset − 100, excursion end + 10]
(and outside unscored excursions), per 1000 such steps, on runs that did not diverge.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence

BEFORE = 100  # an alarm up to this many steps before the onset catches the event
AFTER = 2


@dataclasses.dataclass(frozen=True)
class Excursion:
    start: int
    end: int  # first step back under 1.2·m, or the run's length if it never came back
    onset: int | None  # first step at 2·m
    kind: str  # "major", "divergence", "small", "unrecovered"


def excursions(loss: Sequence[float]) -> list[Excursion]:
    out = []
    best = math.inf
    t, n = 0, len(loss)
    while t < n:
        v = loss[t]
        if best < math.inf and (not math.isfinite(v) or v >= 1.2 * best):
            m, start, onset, peak = best, t, None, 0.0
            while t < n and (not math.isfinite(loss[t]) or loss[t] >= 1.2 * m):
                value = loss[t] if math.isfinite(loss[t]) else math.inf
                peak = max(peak, value / m)
                if onset is None and peak >= 2:
                    onset = t
                t += 1
            recovered = t < n
            if peak == math.inf or (peak >= 10 and not recovered):
                kind = "divergence"
            elif peak >= 2:
                kind = "major" if recovered else "unrecovered"
            else:
                kind = "small"
            out.append(Excursion(start, t, onset, kind))
            continue
        best = min(best, v)
        t += 1
    return out


def scored(events: list[Excursion]) -> list[Excursion]:
    return [e for e in events if e.kind in ("major", "divergence")]


def episodes(alarmed: Sequence[bool]) -> list[int]:
    """Steps where an alarm episode starts."""
    return [t for t, a in enumerate(alarmed) if a and (t == 0 or not alarmed[t - 1])]


@dataclasses.dataclass
class RunScore:
    """One predictor on one run."""

    leads: list[int | None]  # per scored event: lead, or None when missed
    kinds: list[str]
    onsets: list[int]
    false_episodes: int
    clean_steps: int  # steps outside every window (the false-alarm denominator)
    any_alarm: bool
    diverged: bool
    set_apart: int = 0  # scored events left out of leads/kinds/onsets by ``restrict``


def score_run(loss: Sequence[float], alarmed: Sequence[bool]) -> RunScore:
    events = excursions(loss)
    n = len(loss)
    window = [False] * n
    for e in events:
        lo = (e.onset if e.onset is not None else e.start) - BEFORE
        hi = e.end + 10 if e.kind != "small" else e.end
        for t in range(max(0, lo if e.kind != "small" else e.start), min(n, hi)):
            window[t] = True
    leads: list[int | None] = []
    for e in scored(events):
        assert e.onset is not None
        first = next(
            (t for t in range(max(0, e.onset - BEFORE), min(n, e.onset + AFTER + 1)) if alarmed[t]),
            None,
        )
        leads.append(None if first is None else e.onset - first)
    starts = episodes(alarmed[:n])
    return RunScore(
        leads=leads,
        kinds=[e.kind for e in scored(events)],
        onsets=[e.onset for e in scored(events) if e.onset is not None],
        false_episodes=sum(1 for t in starts if not window[t]),
        clean_steps=sum(1 for w in window if not w),
        any_alarm=any(alarmed[:n]),
        diverged=any(e.kind == "divergence" for e in events),
    )


def restrict(score: RunScore, keep: Callable[[int], bool]) -> RunScore:
    """The score with only the events whose onset ``keep`` accepts (the others are set
    apart: the run is still not event-free); false alarms unchanged."""
    picked = [i for i, onset in enumerate(score.onsets) if keep(onset)]
    return dataclasses.replace(
        score,
        leads=[score.leads[i] for i in picked],
        kinds=[score.kinds[i] for i in picked],
        onsets=[score.onsets[i] for i in picked],
        set_apart=score.set_apart + len(score.onsets) - len(picked),
    )


@dataclasses.dataclass
class Summary:
    events: int
    recall: dict[int, float]
    median_lead: float
    false_per_1000: float
    event_free_alarmed: float

    def row(self, name: str) -> str:
        r = self.recall
        return (
            f"| {name} | {self.events} | {r[1]:.2f} | {r[5]:.2f} | {r[20]:.2f} | "
            f"{self.median_lead:.0f} | {self.false_per_1000:.2f} | {self.event_free_alarmed:.0%} |"
        )


HEADER = (
    "| predictor | events | Recall@1 | Recall@5 | Recall@20 | median lead | "
    "false alarms / 1000 steps | event-free runs alarmed |\n"
    "|---|---|---|---|---|---|---|---|"
)


INIT = 10  # events with their onset at or before this step are "init events": no history


def summarize(
    scores: list[RunScore], kinds: set[str] | None = None, after: int | None = None
) -> Summary:
    """Pooled figures; ``kinds`` and ``after`` (onset later than this step) select events."""
    leads = [
        lead
        for s in scores
        for lead, kind, onset in zip(s.leads, s.kinds, s.onsets, strict=True)
        if (kinds is None or kind in kinds) and (after is None or onset > after)
    ]
    caught = [lead for lead in leads if lead is not None]
    normal = [s for s in scores if not s.diverged]
    false = sum(s.false_episodes for s in normal)
    clean = sum(s.clean_steps for s in normal)
    event_free = [s for s in scores if not s.kinds and not s.set_apart]
    return Summary(
        events=len(leads),
        recall={
            k: sum(1 for x in caught if x >= k) / len(leads) if leads else 0.0 for k in (1, 5, 20)
        },
        median_lead=statistics.median(caught) if caught else 0.0,
        false_per_1000=1000 * false / clean if clean else 0.0,
        event_free_alarmed=sum(s.any_alarm for s in event_free) / len(event_free)
        if event_free
        else 0.0,
    )


# -- baselines: a score per step from what the monitor sees (loss, gradient norm) -----


def loss_zscore(loss: Sequence[float], grad: Sequence[float], alpha: float = 0.98) -> list[float]:
    """z-score of the loss against its own exponential mean and variance (W&B-style)."""
    return _ema_z(loss, alpha, warmup=20)


def zclip(loss: Sequence[float], grad: Sequence[float], alpha: float = 0.97) -> list[float]:
    """ZClip (Kumar et al. 2025): z-score of the gradient norm against its EMA, α = 0.97."""
    return _ema_z(grad, alpha, warmup=25)


def olmo_sigma(loss: Sequence[float], grad: Sequence[float], window: int = 128) -> list[float]:
    """OLMo-style spike score: (loss − mean) / std over the previous 128 steps."""
    out = []
    for t, v in enumerate(loss):
        past = [x for x in loss[max(0, t - window) : t] if math.isfinite(x)]
        if not math.isfinite(v):
            out.append(math.inf)
        elif len(past) < 20:
            out.append(0.0)
        else:
            sd = statistics.pstdev(past)
            out.append((v - statistics.fmean(past)) / sd if sd > 0 else 0.0)
    return out


def _ema_z(values: Sequence[float], alpha: float, warmup: int) -> list[float]:
    out: list[float] = []
    mean = var = None
    for t, v in enumerate(values):
        if not math.isfinite(v):
            out.append(math.inf)
            continue
        if mean is None or var is None:
            mean, var = v, 0.0
            out.append(0.0)
            continue
        sd = math.sqrt(var)
        out.append((v - mean) / sd if t >= warmup and sd > 0 else 0.0)
        delta = v - mean
        mean += (1 - alpha) * delta
        var = alpha * (var + (1 - alpha) * delta * delta)
    return out


Baseline = Callable[[Sequence[float], Sequence[float]], list[float]]
BASELINES: dict[str, tuple[Baseline, float]] = {
    "loss EMA z-score (z > 3)": (loss_zscore, 3.0),
    "ZClip grad-norm z-score (α 0.97, z > 2.5)": (zclip, 2.5),
    "OLMo 128-step 6σ": (olmo_sigma, 6.0),
}


def threshold_for_false_rate(
    runs: list[tuple[Sequence[float], list[float]]], target: float
) -> float:
    """The lowest threshold whose false-alarm rate is at most ``target`` (per 1000)."""
    candidates = sorted(
        {round(v, 3) for _, s in runs for v in s if math.isfinite(v) and v > 0}, reverse=True
    )
    best = math.inf
    # Thresholds from high to low: the false-alarm rate only grows; stop past the target.
    for theta in candidates[:: max(1, len(candidates) // 400)]:
        scores = [score_run(loss, [v >= theta for v in s]) for loss, s in runs]
        if summarize(scores).false_per_1000 > target:
            break
        best = theta
    return best
