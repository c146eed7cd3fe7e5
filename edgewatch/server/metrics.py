"""Prometheus export: one custom Collector over the daemon's state, built at scrape time.

Building the families fresh at each scrape (prometheus client_python's custom
collectors; Prometheus "Writing exporters") means a job whose last record is older
than ``job_expiry`` simply is not emitted, so finished and silent jobs leave
``/metrics`` without any unregister bookkeeping. Metric names are fixed by DESIGN.md:
alert rules and dashboards use them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgewatch.monitor.forecast import STATES
from edgewatch.schemas import Reject
from edgewatch.server.counters import DaemonCounters
from edgewatch.server.state import JobState, JobTable

REJECT_REASONS = tuple(r.value for r in Reject)
"""Reasons always exported (at 0 until seen), so that rate() works from the first scrape."""


class EdgewatchCollector(Collector):
    """The daemon's metrics, read from the job table and the counters at each scrape:
    per-job series for the jobs this daemon analyses and has heard from within
    ``job_expiry`` seconds, and the daemon's own counters."""

    def __init__(self, jobs: JobTable, counters: DaemonCounters, job_expiry: float) -> None:
        self.jobs = jobs
        self.counters = counters
        self.job_expiry = job_expiry

    def live_jobs(self) -> list[JobState]:
        # Only the jobs whose lease this daemon holds: where several daemons share a
        # database, each job's series come from one of them (no double counting).
        cutoff = time.time() - self.job_expiry
        return [s for s in self.jobs.snapshot() if s.owned and s.received_at >= cutoff]

    def collect(self) -> Iterator[Metric]:
        jobs = self.live_jobs()
        yield from self._per_job(jobs)
        yield from self._daemon(jobs)

    def _per_job(self, jobs: list[JobState]) -> Iterator[Metric]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["job_id"])

        step = gauge("edgewatch_step", "Last optimizer step received from the job.")
        lr = gauge("edgewatch_learning_rate", "Learning rate in force at the last step.")
        loss = gauge("edgewatch_loss", "Training loss at the last step (NaN when non-finite).")
        grad = gauge("edgewatch_grad_norm", "Global gradient norm at the last step.")
        sharp = gauge("edgewatch_sharpness", "Last sharpness estimate (preconditioned for Adam).")
        thr = gauge(
            "edgewatch_stability_threshold",
            "Sharpness above which the optimizer is unstable at the current LR.",
        )
        ratio = gauge(
            "edgewatch_stability_ratio",
            "Last sharpness estimate divided by the stability threshold at the current LR "
            "(1.0 is the edge; a warmup raises it between estimates).",
        )
        seen = gauge(
            "edgewatch_last_record_timestamp_seconds", "Client wall time of the newest record."
        )
        to_go = gauge(
            "edgewatch_steps_to_instability",
            "Forecast steps until the stability ratio reaches the alarm level (+Inf: none).",
        )
        rec_lr = gauge(
            "edgewatch_recommended_learning_rate",
            "Largest LR the forecast keeps under the safety margin through the horizon.",
        )
        rec_warmup = gauge(
            "edgewatch_recommended_warmup_steps",
            "Steps over which to raise the LR to its planned peak instead (0: no change).",
        )
        running = gauge(
            "edgewatch_job_running",
            "1 while the job's run has not ended (no job end record yet), else 0.",
        )
        states = GaugeMetricFamily(
            "edgewatch_state",
            "Forecast state of the job: 1 for the current one of stable, approaching, "
            "unstable, diverged.",
            labels=["job_id", "state"],
        )
        changed_at = GaugeMetricFamily(
            "edgewatch_state_changed_timestamp_seconds",
            "When the job's forecast last changed into each state (daemon clock); absent "
            "for a state it has not been in. Alert rules use it to keep a state that lasted "
            "less than a scrape.",
            labels=["job_id", "state"],
        )
        changes = CounterMetricFamily(
            "edgewatch_alerts",
            "State changes of the job's forecast into each state, this run (every state "
            "exported from 0, so that increase() sees the first).",
            labels=["job_id", "state"],
        )
        for s in jobs:
            label = [s.job_id]
            seen.add_metric(label, s.last_seen)
            if s.last_step is not None:
                step.add_metric(label, s.last_step)
            if s.lr is not None:
                lr.add_metric(label, s.lr)
            if s.loss is not None:
                loss.add_metric(label, s.loss)
            if s.grad_norm is not None:
                grad.add_metric(label, s.grad_norm)
            if s.sharpness is not None:
                sharp.add_metric(label, s.sharpness)
            threshold, r = s.threshold, s.stability_ratio
            if threshold is not None:
                thr.add_metric(label, threshold)
            if r is not None:
                ratio.add_metric(label, r)
            running.add_metric(label, 1.0 if s.status == "running" else 0.0)
            to_go.add_metric(label, s.steps_to_instability)
            if s.recommended_lr is not None:
                rec_lr.add_metric(label, s.recommended_lr)
            rec_warmup.add_metric(label, s.recommended_warmup_steps)
            for name in STATES:
                states.add_metric([s.job_id, name], 1.0 if s.state == name else 0.0)
                changes.add_metric([s.job_id, name], s.alert_counts.get(name, 0))
                if name in s.state_changed_at:
                    changed_at.add_metric([s.job_id, name], s.state_changed_at[name])
        yield from (step, lr, loss, grad, sharp, thr, ratio, seen, to_go, rec_lr, rec_warmup)
        yield from (running, states, changes, changed_at)

    def _daemon(self, jobs: list[JobState]) -> Iterator[Metric]:
        c = self.counters
        ingested = CounterMetricFamily(
            "edgewatch_records_ingested", "Records committed to the database (duplicates excluded)."
        )
        ingested.add_metric([], c.records_ingested)
        yield ingested
        rejected = CounterMetricFamily(
            "edgewatch_messages_rejected",
            "Frames or records refused, by reason.",
            labels=["reason"],
        )
        for reason in sorted(set(REJECT_REASONS) | set(c.rejected)):
            rejected.add_metric([reason], c.rejected.get(reason, 0))
        yield rejected
        dropped = CounterMetricFamily(
            "edgewatch_client_records_dropped",
            "Records a client dropped before sending (its queue was full), as it reported.",
            labels=["job_id"],
        )
        for s in jobs:
            dropped.add_metric([s.job_id], s.dropped)
        yield dropped
        lag = GaugeMetricFamily(
            "edgewatch_ingest_lag_seconds",
            "At the last commit: its time minus the oldest committed record's client wall time.",
        )
        lag.add_metric([], c.ingest_lag_seconds)
        yield lag
        partitions = CounterMetricFamily(
            "edgewatch_retention_partitions_dropped",
            "Step partitions older than the retain setting dropped (PostgreSQL).",
        )
        partitions.add_metric([], c.retention_partitions)
        yield partitions
        rows = CounterMetricFamily(
            "edgewatch_retention_rows_dropped",
            "Step rows older than the retain setting dropped; their block summaries stay.",
        )
        rows.add_metric([], c.retention_rows)
        yield rows
        count = GaugeMetricFamily("edgewatch_jobs", "Jobs shown on /metrics (not yet expired).")
        count.add_metric([], len(jobs))
        yield count


def make_registry(jobs: JobTable, counters: DaemonCounters, job_expiry: float) -> CollectorRegistry:
    """The daemon's own registry (not the global one): tests and embedders get a clean one."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EdgewatchCollector(jobs, counters, job_expiry))
    return registry
