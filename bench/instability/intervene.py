"""The intervention track of the instability benchmark: does following the advice help?

Every run that diverged is trained again, the recommendation of its first alarm applied
from the alarm step on (the alarm and the advice are those of the settings tuned with
the run's family left out), in two ways:

- **cap**: the LR never again above the recommended LR;
- **hold**: the LR held at or under the recommendation until the sharpness allows the
  planned LR again (the last estimate, taken since the hold began, times the planned LR,
  under 0.8 × max(1, sustained level) of the threshold), then the plan resumed: what the
  alerts' advice says (monitor/recommend.py). The re-run streams to a daemon running
  those settings and asks it (``GET /api/jobs/{job}``) every few steps.

A divergence counts as prevented when the re-run has no DIVERGENCE event; its final label
loss is compared with the best event-free run of its family (target: within 5%).
"""

from __future__ import annotations

import json
import math
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from bench.common import daemon_process
from bench.instability.harness import RunResult, run
from bench.instability.lofo import Case, LeftOut, replay
from bench.instability.scoring import excursions, scored
from edgewatch.monitor.forecast import ALARM_STATES, DEFAULT_SETTINGS, PredictorSettings
from edgewatch.server.config import TUNED

ASK_EVERY = 5  # steps between questions to the daemon while holding
SAFETY = DEFAULT_SETTINGS.safety  # the plan is safe again under SAFETY × max(1, level)
WITHIN = 1.05  # "within 5% of the best stable run of the family"


def _diverged(loss: list[float]) -> bool:
    return any(e.kind == "divergence" for e in excursions(loss))


def _flags(settings: PredictorSettings) -> dict[str, str]:
    return {f"forecast_{name}": repr(getattr(settings, name)) for name in TUNED}


class Hold:
    """The LR held at ``cap`` from ``start`` until the sharpness allows the plan again."""

    def __init__(self, start: int, cap: float, ask: Callable[[], dict[str, Any]]) -> None:
        self.start, self.cap, self.ask = start, cap, ask
        self.holding = False
        self.released_at: int | None = None
        self.planned: dict[int, float] = {}

    def on_step(self, step: int) -> None:
        if step == self.start:
            self.holding = True
        elif self.holding and step > self.start + ASK_EVERY and step % ASK_EVERY == 0:
            job = self.ask()
            if job and self._plan_is_safe(job, self.planned.get(step)):
                self.holding, self.released_at = False, step

    def _plan_is_safe(self, job: dict[str, Any], planned: float | None) -> bool:
        sharpness, threshold, lr = (
            job.get("sharpness"),
            job.get("stability_threshold"),
            job.get("lr"),
        )
        measured_since = (job.get("sharpness_step") or -1) > self.start
        if not (measured_since and sharpness and threshold and lr and planned):
            return False
        ratio_at_plan = sharpness * planned / (threshold * lr)  # the threshold goes as 1/LR
        level = job["analysis"].get("sustained_level") or 0.0
        return bool(ratio_at_plan <= SAFETY * max(1.0, level))

    def __call__(self, step: int, planned: float) -> float:
        self.planned[step] = planned
        return min(planned, self.cap) if self.holding and step >= self.start else planned


def _asker(http: str, job: str) -> Callable[[], dict[str, Any]]:
    url = f"{http}/api/jobs/{urllib.parse.quote(job, safe='')}"

    def ask() -> dict[str, Any]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                answer: dict[str, Any] = json.load(response)
                return answer
        except OSError:
            return {}  # not registered yet: keep holding

    return ask


def intervention(
    results: list[RunResult], cases: list[Case], left_out: list[LeftOut], db_url: str, budget: float
) -> list[str]:
    settings_of = {held.family: held.settings for held in left_out}
    best: dict[str, float] = {}
    for r in results:
        if not scored(excursions(r.label_loss)) and len(r.label_loss) == r.spec.steps:
            best[r.spec.family] = min(best.get(r.spec.family, math.inf), r.label_loss[-1])
    trials = []
    for r, case in zip(results, cases, strict=True):
        if not _diverged(r.label_loss):
            continue
        onset = next(e.onset for e in excursions(r.label_loss) if e.kind == "divergence")
        first = next(
            (
                a
                for a in replay(case, settings_of[r.spec.family])
                if a.state in ALARM_STATES and a.recommended_lr
            ),
            None,
        )
        trials.append((r, onset, first))
    rows, tally = [], {"cap": [0, 0], "hold": [0, 0]}
    for family, settings in settings_of.items():
        chosen = [t for t in trials if t[0].spec.family == family and t[2] is not None]
        if not chosen:
            continue
        with daemon_process(db_url, **_flags(settings)) as (endpoint, http):
            for r, onset, alert in chosen:
                assert alert is not None and alert.recommended_lr is not None
                outcome = []
                for policy in ("cap", "hold"):
                    suffix = f"/fix-{policy}"
                    if policy == "cap":
                        cap = alert.recommended_lr
                        again = run(
                            r.spec,
                            endpoint,
                            (budget,),
                            lambda s, p, c=cap, a=alert.step: p if s < a else min(p, c),
                            suffix,
                        )
                    else:
                        hold = Hold(
                            alert.step,
                            alert.recommended_lr,
                            _asker(http, f"{r.jobs[f'{budget:g}']}{suffix}"),
                        )
                        again = run(r.spec, endpoint, (budget,), hold, suffix, hold.on_step)
                    prevented = (
                        not _diverged(again.label_loss) and len(again.label_loss) == r.spec.steps
                    )
                    final = again.label_loss[-1]
                    close = prevented and final <= WITHIN * best.get(family, math.nan)
                    tally[policy][0] += prevented
                    tally[policy][1] += close
                    outcome.append(
                        f"{policy}: {'prevented' if prevented else 'diverged'}, final {final:.4g}"
                    )
                rows.append(
                    f"- {r.spec.job} ({family}): divergence at step {onset}, first alarm at step "
                    f"{alert.step} ({alert.state}), recommended LR {alert.recommended_lr:.3g}; "
                    + "; ".join(outcome)
                    + f"; best event-free run of the family {best.get(family, math.nan):.4g}"
                )
    missed = [
        f"- {r.spec.job}: no alarm with a recommendation before it diverged"
        for r, _, alert in trials
        if alert is None
    ]
    n = len(trials)
    lines = [f"#### Intervention track (budget {budget:g})", ""]
    for policy, (prevented, close) in tally.items():
        share, within = prevented / max(1, n), close / max(1, prevented)
        lines.append(
            f"- **{policy}**: {prevented} of {n} divergences prevented ({share:.0%}); {close} "
            f"of those {prevented} ended within 5% of the best event-free run of their "
            f"family ({within:.0%})."
        )
    return [
        *lines,
        "",
        "<details><summary>runs</summary>",
        "",
        *rows,
        *missed,
        "",
        "</details>",
        "",
    ]
