"""The sender thread: owns the ZeroMQ DEALER socket, turns chunks into frames, keeps
every frame until the daemon acknowledges its commit, and resends what goes unanswered.

    training thread --put()--> inbox (bounded, oldest chunk dropped and counted)
    sender thread:  inbox --> records (seq numbers, values read back) --> frames
                    frames --send--> daemon --Ack/Nack--> forget the frame
                    unanswered for ``resend_after`` s --> send again

The socket has IMMEDIATE set: while no daemon is connected a send fails at once
instead of queueing inside ZeroMQ, so the frames stay here, counted and bounded, and
``close()`` knows there is nobody to wait for.

With several endpoints, work unanswered past ``resend_after`` moves the socket to the
next one (``_fail_over``): the JobStart goes first again, then every unacknowledged frame.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import zmq

from edgewatch.client.outbox import Outbox, SenderStats
from edgewatch.client.plan_tracker import LRSeen, News, PlanSent
from edgewatch.client.records import Item, PlanItem, RecordItem, StepChunk, ready, step_records
from edgewatch.client.schedule import Lookahead
from edgewatch.client.spool import Spool
from edgewatch.monitor.plan import compress
from edgewatch.schemas import (
    RUN_CONFLICT,
    Ack,
    AnyRecord,
    JobStart,
    Nack,
    Plan,
    Step,
    decode_reply,
)

__all__ = ["Item", "PlanItem", "RecordItem", "Sender", "SenderStats", "StepChunk"]

log = logging.getLogger("edgewatch.client")

MAX_FRAME_RECORDS = 4096
CONNECT_GRACE = 2.0


class Sender(threading.Thread):
    """The thread that delivers one run's records to the daemon.

    The training thread calls ``put()`` (never blocks) and, at the end, ``finish()``;
    everything else runs on this thread: items from ``inbox`` become records (their
    sequence numbers drawn here) and frames in ``outbox``, frames go out on the DEALER
    socket and stay until an Ack or Nack answers them, and unanswered ones go again after
    ``resend_after`` s. ``stats`` counts what happened to every record.
    """

    def __init__(
        self,
        endpoint: str | Sequence[str],
        job: str,
        run: int,
        start: dict[str, Any],
        *,
        max_buffered: int,
        flush_interval: float,
        resend_after: float = 5.0,
        curve: tuple[bytes, bytes, bytes] | None = None,
        spool: Spool | None = None,
        plan_news: collections.deque[News] | None = None,
    ) -> None:
        super().__init__(name="edgewatch-sender", daemon=True)
        # Daemons to try in turn: the next one when this one stops answering (failover).
        self.endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        self._current = 0
        self.failovers = 0
        self._answered: set[int] = set()  # endpoints (indexes) that replied during the run
        self._waiting_since: float | None = None  # unanswered work since, at this daemon
        self._finish_failovers = 0
        self.job, self.run_id = job, run
        self._start_fields = start  # the JobStart: framed first, kept until acknowledged
        self.flush_interval = flush_interval
        self.resend_after = resend_after
        self.curve = curve  # (server public, own public, own secret) keys, or None
        self._start_record: AnyRecord | None = None  # the JobStart, kept to send again
        self.inbox: collections.deque[Item] = collections.deque()
        self.max_inbox = max(4, max_buffered // 64)  # chunks are at most 64 steps
        self.stats = SenderStats()
        # Frames unacknowledged for long, or past max_buffered, go to the spool.
        self.outbox = Outbox(job, run, max_buffered, self.stats, spool)
        self.plan_news = plan_news  # what the training thread's PlanTracker learns from us
        self.connected = False
        self.stability_ratio: float | None = None  # the daemon's view, from its last Ack
        self._seq = 0
        self._unsent: list[Item] = []  # taken from inbox, values in flight
        self._finishing = threading.Event()
        self._close_deadline = 0.0
        self._finish_asked = 0.0
        self._logged: set[str] = set()
        self.refused: str | None = None  # why the daemon refused this run, once it has

    # -- training thread side ---------------------------------------------------------

    def put(self, item: Item) -> None:
        """Never blocks. When the sender falls behind, the oldest chunk goes, counted."""
        if len(self.inbox) >= self.max_inbox:
            try:
                old = self.inbox.popleft()
                self.stats.dropped_queue += len(old.rows) if isinstance(old, StepChunk) else 1
            except IndexError:
                pass
        self.inbox.append(item)

    def finish(self, timeout: float) -> None:
        """Ask the thread to send everything and wait up to ``timeout`` for the acks."""
        self._finish_asked = time.monotonic()
        self._close_deadline = self._finish_asked + timeout
        self._finishing.set()

    @property
    def endpoint(self) -> str:
        """The daemon this sender sends to now."""
        return self.endpoints[self._current]

    @property
    def unacknowledged(self) -> int:
        outbox = self.outbox
        return outbox.buffered + len(self.inbox) + len(self._unsent) + outbox.spooled_records

    # -- sender thread ----------------------------------------------------------------

    def run(self) -> None:
        context: zmq.Context[Any] = zmq.Context(io_threads=1)
        sock = context.socket(zmq.DEALER)
        for option, value in (
            (zmq.LINGER, 0),  # close() must never hang on unsent frames
            (zmq.IMMEDIATE, 1),  # no daemon, no queueing inside ZeroMQ (see module doc)
            (zmq.SNDHWM, 64),
            (zmq.RCVHWM, 1024),
            (zmq.RECONNECT_IVL, 100),
            (zmq.RECONNECT_IVL_MAX, 1000),  # a restarted daemon is found within a second
            (zmq.MAXMSGSIZE, 1 << 20),
        ):
            sock.setsockopt(option, value)
        try:
            self.outbox.adopt_orphans(self._note)  # a dead run's frames go before our start
            self._start_record = self._record(RecordItem(JobStart, self._start_fields))
            self.outbox.add([self._start_record], sticky=True)
            if self.curve is not None:
                sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self.curve
            sock.connect(self.endpoint)
            self._loop(sock)
        except Exception as exc:  # the thread must end cleanly whatever happens
            self._note("sender", f"sender thread stopped: {exc!r}")
        finally:
            self.outbox.close_spool()
            sock.close(linger=0)
            context.term()

    def _loop(self, sock: zmq.Socket[Any]) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        last_contact = time.monotonic()
        while True:
            try:
                self._frame_inbox()
                self.outbox.spool_or_drain(self.connected)
                if self._send_frames(sock):
                    last_contact = time.monotonic()
                if poller.poll(int(self.flush_interval * 1000)):
                    self._read_replies(sock)
                    last_contact = time.monotonic()
                    self._waiting_since = None  # this daemon answers
                    self._answered.add(self._current)
                if self._stalled(time.monotonic()):
                    self._fail_over(sock)
                    last_contact = time.monotonic()
            except Exception as exc:
                self.stats.errors += 1
                self._note(type(exc).__name__, f"sender error (monitoring continues): {exc!r}")
                time.sleep(self.flush_interval)
            if self._finishing.is_set() and self._done_or_hopeless(last_contact):
                return

    def _done_or_hopeless(self, last_contact: float) -> bool:
        now = time.monotonic()
        if self.unacknowledged == 0 or now >= self._close_deadline:
            return True
        # Nothing connected for CONNECT_GRACE seconds since close() was asked for (longer
        # than ZeroMQ's reconnect backoff, so a daemon that just restarted is found): a
        # daemon that never existed, or died, must not hold close() for the whole timeout.
        quiet = now - max(last_contact, self._finish_asked)
        return not self.connected and quiet > CONNECT_GRACE and not self._may_fail_over()

    # -- failover ---------------------------------------------------------------------

    def _may_fail_over(self) -> bool:
        """Another endpoint to try; once close() is asked for, each other one once, and
        then, until close()'s deadline, those that answered during the run: a daemon
        merely slow at the end (busy, or taking the job over) must not lose the run's
        last records to a dead endpoint tried after it."""
        if len(self.endpoints) < 2:
            return False
        if not self._finishing.is_set() or self._finish_failovers < len(self.endpoints) - 1:
            return True
        alive = self._answered - {self._current}
        return bool(alive) and time.monotonic() < self._close_deadline

    def _stalled(self, now: float) -> bool:
        """Work has waited for this daemon past the resend timeout with no answer from it
        (sends failing, or sent and unanswered): a daemon dead for good, for all we know.
        Once close() is asked for, patience is shorter than close()'s own (CONNECT_GRACE),
        so that the others are tried before it gives up."""
        if self.unacknowledged == 0:
            self._waiting_since = None
            return False
        if self._waiting_since is None:
            self._waiting_since = now
            return False
        finishing = self._finishing.is_set()
        patience = min(self.resend_after, CONNECT_GRACE / 2) if finishing else self.resend_after
        return now - self._waiting_since > patience and self._may_fail_over()

    def _fail_over(self, sock: zmq.Socket[Any]) -> None:
        """Move to the next endpoint: every unacknowledged frame goes again, behind the
        JobStart (the new daemon may not know the job). Nothing acknowledged is lost, and
        nothing is stored twice: the daemons store records once by (job, run, seq)."""
        old = self.endpoint
        self._current = (self._current + 1) % len(self.endpoints)
        self.failovers += 1
        if self._finishing.is_set():
            self._finish_failovers += 1
        with contextlib.suppress(zmq.ZMQError):  # not connected any more: nothing to undo
            sock.disconnect(old)
        sock.connect(self.endpoint)
        self.connected = False
        self._waiting_since = None
        self.outbox.resend_all()
        if self._start_record is not None and not self.outbox.has_sticky():
            self.outbox.add_first(self._start_record)
        log.warning(
            "edgewatch: no answer from %s for %.1f s; sending to %s",
            old,
            self.resend_after,
            self.endpoint,
        )

    def _frame_inbox(self) -> None:
        while self.inbox:
            self._unsent.append(self.inbox.popleft())
        if self.refused is not None:  # this run is not the daemon's to store: count, drop
            for item in self._unsent:
                self.stats.rejected += len(item.rows) if isinstance(item, StepChunk) else 1
            self._unsent.clear()
            return
        records: list[AnyRecord] = []
        # Records keep their order: a chunk whose device values are still in flight
        # holds back everything behind it.
        while self._unsent and ready(self._unsent[0]):
            item = self._unsent.pop(0)
            if isinstance(item, RecordItem):
                records.append(self._record(item))
            elif isinstance(item, PlanItem):
                records.append(self._plan(item.lookahead))
            else:
                steps = step_records(
                    item.rows, item.packed.floats(), self.job, self.run_id, self._seq
                )
                self._seq += len(steps)
                records.extend(steps)
                if self.plan_news is not None:
                    last = steps[-1] if isinstance(steps[-1], Step) else steps[-2]
                    assert isinstance(last, Step)
                    self.plan_news.append(LRSeen(last.step, last.lr))
            if len(records) >= MAX_FRAME_RECORDS:
                self.outbox.add(records)
                records = []
        if records:
            self.outbox.add(records)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _record(self, item: RecordItem) -> AnyRecord:
        return item.kind(job=self.job, run=self.run_id, seq=self._next_seq(), **item.fields)

    def _plan(self, lookahead: Lookahead) -> Plan:
        plan = compress(lookahead.first_step, lookahead.lrs())
        if self.plan_news is not None:
            self.plan_news.append(PlanSent(plan, lookahead.ended))
        return Plan(
            job=self.job,
            run=self.run_id,
            seq=self._next_seq(),
            step=lookahead.first_step,
            wall_time=time.time(),
            steps=list(plan.steps),
            lrs=list(plan.lrs),
            source=lookahead.source,
        )

    def _send_frames(self, sock: zmq.Socket[Any]) -> bool:
        now = time.monotonic()
        sent = False
        frames = list(self.outbox.frames.values())
        if frames and frames[0].sticky:
            # The JobStart is not acknowledged yet: a daemon that has not got it would
            # refuse everything else, so it goes alone until it is.
            frames = frames[:1]
        for frame in frames:
            if frame.sent_at is not None and now - frame.sent_at < self.resend_after:
                continue
            try:
                sock.send(frame.payload, zmq.NOBLOCK)
            except zmq.Again:
                self.connected = False  # IMMEDIATE: no connected daemon, or its queue is full
                return sent
            frame.sent_at = now
            sent = self.connected = True
        return sent

    def _read_replies(self, sock: zmq.Socket[Any]) -> None:
        while True:
            try:
                payload = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = decode_reply(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self._note("bad_reply", "undecodable reply from the daemon (ignored)")
                continue
            if isinstance(reply, Nack) and reply.reason == "unknown_job":
                self._restart_job(reply.frame_id)
                continue
            frame = self.outbox.pop(reply.frame_id)
            if frame is None:
                continue  # the answer to a resent frame already answered (or a garbled id)
            match reply:
                case Ack():
                    # Every record of the frame is taken care of (stored now, stored
                    # before, or applied to the job) except the ones refused.
                    if not frame.repeat:  # counted when it was acknowledged first
                        self.stats.acknowledged += frame.records - reply.rejected
                    self.stability_ratio = reply.stability_ratio
                    self.stats.rejected += reply.rejected
                    if reply.rejected:
                        self._note(
                            reply.reason,
                            f"daemon refused {reply.rejected} record(s): {reply.reason}",
                        )
                case Nack() if reply.reason == RUN_CONFLICT:
                    self.stats.rejected += frame.records
                    self._refuse_run(reply.detail)
                case Nack():
                    self.stats.rejected += frame.records
                    self._note(
                        reply.reason, f"daemon refused a frame: {reply.reason} {reply.detail}"
                    )

    def _refuse_run(self, detail: str) -> None:
        """The daemon holds this (job, run) from another process: whatever this run sent
        would be taken for resends of that one's records and not stored. Send nothing more,
        and say so loudly: the records of this run are not being kept."""
        self.refused = detail or RUN_CONFLICT
        self.stats.rejected += self.outbox.clear()
        self._start_record = None
        log.error(
            "edgewatch: the daemon refused run %d of job %r (%s); nothing of this run is "
            "stored. Attach again (a new run id is drawn) or use another job name.",
            self.run_id,
            self.job,
            self.refused,
        )

    def _restart_job(self, frame_id: int | None) -> None:
        """The daemon does not know this job (a new database, or a start lost on the way):
        keep the refused frame, and send the JobStart again, first."""
        frame = self.outbox.frames.get(frame_id) if frame_id is not None else None
        if frame is not None:
            frame.sent_at = None
        if self._start_record is None or self.outbox.has_sticky():
            return  # already on its way again
        self._note("unknown_job", "the daemon did not know this job; sending its start again")
        self.outbox.add_first(self._start_record)

    def _note(self, key: str, message: str) -> None:
        """Log each kind of problem once; the counters keep the rest."""
        if key not in self._logged:
            self._logged.add(key)
            log.warning("edgewatch: %s", message)
