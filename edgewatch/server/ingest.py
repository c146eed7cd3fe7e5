"""The ingest loop: ZeroMQ ROUTER in, batched commits, acknowledgements out.

One thread owns the ROUTER socket (ZeroMQ sockets are not thread-safe) and the commits
(``writer.py`` says why no second thread), so the order is simple:

    receive frames --> check and convert --> pending
    every ``commit_interval`` seconds, or at ``commit_rows`` pending records:
        one transaction --> Ack every frame it committed --> update JobTable

An Ack is sent only for frames whose transaction committed; a frame whose commit
failed is not acknowledged, and the client sends it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import Counter
from typing import Any

import zmq
from sqlalchemy.exc import DBAPIError, OperationalError

from edgewatch.errors import ConfigError, FrameRejected
from edgewatch.schemas import (
    CRITICAL_METHOD,
    Ack,
    Batch,
    Event,
    JobEnd,
    JobStart,
    Nack,
    Plan,
    Sharpness,
    Step,
    decode_batch,
    encode,
)
from edgewatch.server import rows, writer
from edgewatch.server.analysis import RunAnalysis
from edgewatch.server.config import Settings
from edgewatch.server.counters import DaemonCounters, RateLimitedLog
from edgewatch.server.security import CurveServer
from edgewatch.server.starts import start_run
from edgewatch.server.state import JobState, JobTable
from edgewatch.server.store import FrameWrite, JobProgress, Store
from edgewatch.server.writer import CommitBatch

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _PendingFrame:
    identity: bytes
    frame_id: int
    write: FrameWrite
    rejected: int
    reason: str
    oldest_wall_time: float


@dataclasses.dataclass
class _JobUpdate:
    """The newest values a commit brings for one job, applied to JobState after it."""

    last_seen: float = 0.0
    dropped: int = 0
    step: Step | None = None
    sharpness: Sharpness | None = None
    end: JobEnd | None = None


class Ingest:
    """Owns the ROUTER socket; ``run()`` until ``stop`` is set, then drains and commits."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        jobs: JobTable,
        counters: DaemonCounters,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self.counters = counters
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 1000)
        # Twice the frame limit: frames in between are read, then rejected and counted
        # as oversized; beyond it ZeroMQ drops the peer before the bytes reach memory.
        self.socket.setsockopt(zmq.MAXMSGSIZE, 2 * settings.max_frame_bytes)
        self.socket.setsockopt(zmq.RCVHWM, 10_000)
        self.curve: CurveServer | None = None
        if settings.curve_secret_key:
            self.curve = CurveServer(
                self.context, self.socket, settings.curve_secret_key, settings.curve_clients
            )
        try:
            self.socket.bind(settings.bind)
        except zmq.ZMQError as exc:
            self.socket.close(linger=0)
            if self.curve is not None:
                self.curve.stop()
            raise ConfigError(
                f"cannot bind {settings.bind}: {exc.strerror}. Is another `edgewatch serve` "
                "running there? Choose another --bind."
            ) from exc
        self.endpoint: str = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._pending: list[_PendingFrame] = []
        self._pending_rows = 0
        self._updates: dict[int, _JobUpdate] = {}
        self._deadline: float | None = None
        self._log = RateLimitedLog()
        self.analyses: dict[int, RunAnalysis] = {}  # by job pk: the current run's forecast
        self.ready = threading.Event()

    # -- the loop ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        if self.curve is not None:
            poller.register(self.curve.monitor, zmq.POLLIN)
        self.ready.set()
        try:
            while not stop.is_set():
                try:
                    self._iteration(poller)
                except Exception:  # a bug costs the frames in flight (resent), never the daemon
                    log.exception("ingest error; unacknowledged frames will be resent")
                    self._pending, self._updates, self._pending_rows = [], {}, 0
                    self._deadline = None
        finally:
            self._shutdown()

    def _iteration(self, poller: zmq.Poller) -> None:
        timeout = 100.0
        if self._deadline is not None:
            timeout = max(0.0, min(timeout, (self._deadline - time.monotonic()) * 1000))
        if poller.poll(int(timeout)):
            self._drain(max_frames=1000)
            if self.curve is not None:
                for reason in self.curve.failed_handshakes():
                    self.counters.rejected[reason] += 1
                    self._log.warning(reason, "refused a client's CURVE handshake: %s", reason)
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self.commit()

    def _drain(self, max_frames: int) -> int:
        received = 0
        while received < max_frames:
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            received += 1
            self.receive(parts)
            if self._pending_rows >= self.settings.commit_rows:
                self.commit()
        return received

    def _shutdown(self) -> None:
        """Stop accepting, commit what was received, acknowledge it, close."""
        with contextlib.suppress(zmq.ZMQError):
            self.socket.unbind(self.endpoint)
        try:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and self._drain(max_frames=1000):
                pass
            self.commit()
        finally:
            self.socket.close(linger=1000)
            if self.curve is not None:
                self.curve.stop()

    # -- one frame --------------------------------------------------------------------

    def receive(self, parts: list[bytes]) -> None:
        identity = parts[0]
        if len(parts) != 2:
            self._reject(identity, None, FrameRejected("malformed", f"{len(parts) - 1} parts"))
            return
        try:
            batch = decode_batch(parts[1], self.settings.max_frame_bytes)
        except FrameRejected as exc:
            self._reject(identity, None, exc)
            return
        problem = rows.check_batch(batch)
        if problem is not None:
            self._reject(identity, batch.frame_id, FrameRejected(*problem))
            return
        try:
            self._accept(identity, batch)
        except FrameRejected as exc:  # a JobStart refused: the frame is not stored
            self._reject(identity, batch.frame_id, exc)
        except (OperationalError, DBAPIError) as exc:
            # Only a job start writes here (see _accept); the frame stays unacknowledged
            # and the client sends it again once the database answers.
            log.error("database error while registering job %r: %s", batch.job, exc)

    def _reject(self, identity: bytes, frame_id: int | None, exc: FrameRejected) -> None:
        self.counters.rejected[exc.reason] += 1
        self._log.warning(exc.reason, "rejected frame: %s", exc)
        self._send(identity, Nack(frame_id=frame_id, reason=exc.reason, detail=exc.detail[:200]))

    def _accept(self, identity: bytes, batch: Batch) -> None:
        job, run = batch.job, batch.run
        state = self.jobs.get(job)
        pk = state.pk if state else -1
        analysis = self.analyses.get(pk)
        write = FrameWrite(job_pk=pk)
        steps = write.steps
        rejected: Counter[str] = Counter()
        last_step: Step | None = None
        last_sharpness: Sharpness | None = None
        first_wall = last_wall = None
        block: list[Step] = []  # steps for the forecast, fed in blocks (monitor/batch.py)

        def analyse_block() -> None:
            if analysis is not None and block:
                for alert, wall in analysis.steps(block):
                    write.alerts.append(analysis.alert_row(alert, wall))
            block.clear()

        for record in batch.records:
            # Steps are nearly every record: one type test, one check, one tuple.
            if type(record) is Step:
                reason = rows.check_step(record, job, run)
                if reason is None and state is not None:
                    steps.append(rows.step_row(pk, record))
                    last_step = record
                    last_wall = record.wall_time
                    first_wall = first_wall or last_wall
                    if analysis is not None and record.run == analysis.run:
                        block.append(record)
                    continue
            else:
                analyse_block()  # the steps before this record, first
                reason = rows.check_record(record, job, run)
                if reason is None and isinstance(record, JobStart):
                    state = start_run(record, self.store, self.jobs, self.analyses, self.settings)
                    pk = write.job_pk = state.pk
                    analysis = self.analyses.get(pk)
                    continue
                if reason is None and state is not None:
                    last_wall = record.wall_time
                    first_wall = first_wall or last_wall
                    match record:
                        case Sharpness():
                            write.sharpness.append(rows.sharpness_row(pk, record))
                            if record.method != CRITICAL_METHOD:  # the gauges show λ_max
                                last_sharpness = record
                        case Event():
                            write.events.append(rows.event_row(pk, record))
                        case Plan():
                            write.events.append(rows.plan_row(pk, record))
                        case JobEnd():
                            write.end = record
                    if analysis is not None and record.run == analysis.run:
                        alert = analysis.record(record)
                        if alert is not None:
                            write.alerts.append(analysis.alert_row(alert, last_wall))
                    continue
            rejected[reason or "unknown_job"] += 1  # a client must send its JobStart first
        analyse_block()
        if state is None and rejected.get("unknown_job"):
            # The whole frame is of a job this daemon has no start for (its database was
            # replaced, or the start is still on its way). Refuse it as a frame: the client
            # keeps it, sends its JobStart again, then this frame.
            self._reject(identity, batch.frame_id, FrameRejected("unknown_job", job[:100]))
            return
        if state is not None and last_wall is not None:
            update = self._updates.setdefault(pk, _JobUpdate())
            update.last_seen = max(update.last_seen, last_wall)
            update.dropped = max(update.dropped, batch.dropped)
            update.step = last_step or update.step
            update.sharpness = last_sharpness or update.sharpness
            update.end = write.end or update.end
        for reason, n in rejected.items():
            self.counters.rejected[reason] += n
            self._log.warning(reason, "rejected %d record(s) of job %r: %s", n, job, reason)
        oldest = first_wall if first_wall is not None else time.time()
        self._pending.append(
            _PendingFrame(
                identity,
                batch.frame_id,
                write,
                sum(rejected.values()),
                ",".join(sorted(rejected)),
                oldest,
            )
        )
        self._pending_rows += write.rows
        if self._deadline is None:
            self._deadline = time.monotonic() + self.settings.commit_interval

    # -- commit -----------------------------------------------------------------------

    def commit(self) -> None:
        """Commit the pending frames in one transaction, then acknowledge them."""
        pending, updates = self._pending, self._updates
        self._pending, self._updates, self._pending_rows, self._deadline = [], {}, 0, None
        if not pending:
            return
        progress = [
            JobProgress(
                job_pk=pk,
                last_seen=u.last_seen,
                last_step=u.step.step if u.step else None,
                last_loss=u.step.loss if u.step else None,
                dropped=u.dropped,
            )
            for pk, u in updates.items()
        ]
        batch = writer.commit(self.store, CommitBatch([p.write for p in pending], progress))
        if batch.database_down:
            return  # nothing acknowledged: the clients resend
        for i, error in batch.failed.items():
            p = pending[i]
            self._reject(p.identity, p.frame_id, FrameRejected("store_error", error))
        committed = [pending[i] for i in batch.committed]
        if not committed:
            return
        now = time.time()
        self.counters.records_ingested += sum(p.write.stored for p in committed)
        self.counters.commits += 1
        oldest = min(p.oldest_wall_time for p in committed)
        self.counters.ingest_lag_seconds = max(0.0, now - oldest)
        states = self._apply(updates, committed, now)
        for p in committed:
            ack = Ack(
                frame_id=p.frame_id,
                stored=p.write.stored,
                duplicates=p.write.rows - p.write.stored,
                rejected=p.rejected,
                reason=p.reason,
                stability_ratio=states[p.write.job_pk].ack_ratio
                if p.write.job_pk in states
                else None,
            )
            self._send(p.identity, ack)

    def _apply(
        self, updates: dict[int, _JobUpdate], pending: list[_PendingFrame], now: float
    ) -> dict[int, JobState]:
        """Bring the committed values into the job table; returns the updated states."""
        stored_by_job: Counter[int] = Counter()
        for p in pending:
            stored_by_job[p.write.job_pk] += p.write.stored
        by_pk = {s.pk: s for s in self.jobs.snapshot()}
        updated: dict[int, JobState] = {}
        for pk, u in updates.items():
            state = by_pk.get(pk)
            if state is None:
                continue
            updated[pk] = state
            state.records += stored_by_job[pk]
            state.received_at = now
            state.last_seen = max(state.last_seen, u.last_seen)
            state.dropped = max(state.dropped, u.dropped)
            if u.step is not None:
                state.last_step, state.lr = u.step.step, u.step.lr
                state.loss, state.grad_norm = u.step.loss, u.step.grad_norm
            if u.sharpness is not None:
                state.sharpness, state.sharpness_step = u.sharpness.value, u.sharpness.step
                state.preconditioned = u.sharpness.preconditioned
            if u.end is not None:
                state.status, state.ended_at = u.end.status, u.end.wall_time
            analysis = self.analyses.get(pk)
            if analysis is not None:
                state.follow(analysis.forecast, analysis.changed_at)
            self.jobs.put(state)
        return updated

    def _send(self, identity: bytes, message: Ack | Nack) -> None:
        # A client gone or not reading misses its Ack; it resends and gets a duplicate Ack.
        with contextlib.suppress(zmq.ZMQError):
            self.socket.send_multipart([identity, encode(message)], zmq.NOBLOCK)
