"""The sender thread: owns the ZeroMQ DEALER socket, turns chunks into frames, keeps
every frame until the daemon acknowledges its commit, and resends what goes unanswered.

    training thread --put()--> inbox (bounded, oldest chunk dropped and counted)
    sender thread:  inbox --> records (seq numbers, values read back) --> frames
                    frames --send--> daemon --Ack/Nack--> forget the frame
                    unanswered for ``resend_after`` s --> send again

The socket has IMMEDIATE set: while no daemon is connected a send fails at once
instead of queueing inside ZeroMQ, so the frames stay here, counted and bounded, and
``close()`` knows there is nobody to wait for.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Any, TypeAlias

import msgspec
import zmq

from edgewatch.client.readback import VALUES_PER_ROW, Packed, Row
from edgewatch.client.schedule import REPLAN_BEFORE_END, Lookahead
from edgewatch.client.spool import Spool, orphans
from edgewatch.monitor.plan import LRPlan, compress, lr_moved
from edgewatch.schemas import (
    RUN_CONFLICT,
    Ack,
    AnyRecord,
    Batch,
    Event,
    JobStart,
    Nack,
    Plan,
    Step,
    decode_reply,
    encode,
)

log = logging.getLogger("edgewatch.client")

MAX_FRAME_RECORDS = 4096
SPOOL_AFTER = 2.0  # seconds a frame waits for a daemon before it goes to the spool
INF = float("inf")
CONNECT_GRACE = 2.0


@dataclasses.dataclass
class StepChunk:
    """Steps shipped together by the training thread.

    ``rows`` as the monitor keeps them; ``packed`` holds the loss, gradient norm and loss
    scale of each step as floats, interleaved: [loss0, norm0, scale0, loss1, ...]
    (device values read back once ``packed.ready()``).
    """

    rows: list[Row]
    packed: Packed


@dataclasses.dataclass
class RecordItem:
    """A non-step record to send; the sender fills in job, run and seq."""

    kind: type[AnyRecord]
    fields: dict[str, Any]


@dataclasses.dataclass
class PlanItem:
    """A snapshot of the LR schedule, stepped ahead here into a Plan record."""

    lookahead: Lookahead


Item: TypeAlias = StepChunk | RecordItem | PlanItem


def _record_count(payload: bytes) -> int | None:
    try:
        return len(msgspec.msgpack.decode(payload, type=Batch).records)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _ready(item: Item) -> bool:
    return not isinstance(item, StepChunk) or item.packed.ready()


@dataclasses.dataclass
class _Frame:
    frame_id: int
    records: int
    payload: bytes
    sticky: bool  # holds the JobStart: never dropped
    sent_at: float | None = None
    created_at: float = dataclasses.field(default_factory=time.monotonic)


@dataclasses.dataclass
class SenderStats:
    records: int = 0  # records framed for sending
    acknowledged: int = 0
    rejected: int = 0
    dropped_queue: int = 0  # by the training thread: inbox full (written by it alone)
    dropped_buffer: int = 0  # by the sender: unacknowledged buffer (and spool) full
    errors: int = 0
    spooled: int = 0  # records written to the disk spool (some more than once)
    spool_torn_bytes: int = 0  # discarded from spools cut off mid-record

    @property
    def dropped(self) -> int:
        return self.dropped_queue + self.dropped_buffer


class Sender(threading.Thread):
    def __init__(
        self,
        endpoint: str,
        job: str,
        run: int,
        start: dict[str, Any],
        *,
        max_buffered: int,
        flush_interval: float,
        resend_after: float = 5.0,
        curve: tuple[bytes, bytes, bytes] | None = None,
        spool: Spool | None = None,
    ) -> None:
        super().__init__(name="edgewatch-sender", daemon=True)
        self.endpoint = endpoint
        self.job, self.run_id = job, run
        self._start_fields = start  # the JobStart: framed first, kept until acknowledged
        self.max_buffered = max_buffered
        self.flush_interval = flush_interval
        self.resend_after = resend_after
        self.curve = curve  # (server public, own public, own secret) keys, or None
        self.spool = spool  # frames unacknowledged for long, or past max_buffered, go here
        self._from_spool: set[int] = set()  # frame ids read back from the spool, unacked
        self._start_record: AnyRecord | None = None  # the JobStart, kept to send again
        self.inbox: collections.deque[Item] = collections.deque()
        self.max_inbox = max(4, max_buffered // 64)  # chunks are at most 64 steps
        self.stats = SenderStats()
        self.spooled_records = 0  # records waiting in the spool (not in memory)
        self.connected = False
        self.stability_ratio: float | None = None  # the daemon's view, from its last Ack
        self.plan: LRPlan | None = None  # the LR plan sent last
        self.plan_ends_run = False  # the schedule raised past the plan's end
        self.replan_wanted = True  # read by the training thread: send a (new) plan
        self.plan_pending = False  # set by the training thread until the plan is framed
        self._seq = 0
        self._next_frame_id = 1
        self._unsent: list[Item] = []  # taken from inbox, values in flight
        self._frames: collections.OrderedDict[int, _Frame] = collections.OrderedDict()
        self._buffered = 0  # records in _frames
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
    def unacknowledged(self) -> int:
        return self._buffered + len(self.inbox) + len(self._unsent) + self.spooled_records

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
            if self.spool is not None:
                self._adopt_orphans()  # a dead run's frames go before this run's JobStart
            self._start_record = self._record(RecordItem(JobStart, self._start_fields))
            self._add_frame([self._start_record], sticky=True)
            if self.curve is not None:
                sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self.curve
            sock.connect(self.endpoint)
            self._loop(sock)
        except Exception as exc:  # the thread must end cleanly whatever happens
            self._note("sender", f"sender thread stopped: {exc!r}")
        finally:
            if self.spool is not None:
                self._close_spool()
            sock.close(linger=0)
            context.term()

    def _loop(self, sock: zmq.Socket[Any]) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        last_contact = time.monotonic()
        while True:
            try:
                self._frame_inbox()
                if self.spool is not None:
                    self._spool_or_drain()
                    self.spool.flush()  # one write to the OS per iteration, not per frame
                if self._send_frames(sock):
                    last_contact = time.monotonic()
                if poller.poll(int(self.flush_interval * 1000)):
                    self._read_replies(sock)
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
        return not self.connected and quiet > CONNECT_GRACE

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
        while self._unsent and _ready(self._unsent[0]):
            item = self._unsent.pop(0)
            if isinstance(item, RecordItem):
                records.append(self._record(item))
            elif isinstance(item, PlanItem):
                records.append(self._plan(item.lookahead))
            else:
                records.extend(self._steps(item))
                self._check_plan(item.rows[-1])
            if len(records) >= MAX_FRAME_RECORDS:
                self._add_frame(records)
                records = []
        if records:
            self._add_frame(records)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _record(self, item: RecordItem) -> AnyRecord:
        return item.kind(job=self.job, run=self.run_id, seq=self._next_seq(), **item.fields)

    def _plan(self, lookahead: Lookahead) -> Plan:
        plan = compress(lookahead.first_step, lookahead.lrs())
        self.plan, self.plan_pending = plan, False
        self.plan_ends_run = lookahead.ended  # the schedule stops there: no plan goes further
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

    def _check_plan(self, row: Row) -> None:
        """Ask for a new plan when the LR has left this one or it is running out."""
        plan, step, lr = self.plan, row[0], float(row[2][0])
        if plan is None or self.replan_wanted or self.plan_pending:
            return  # a new plan is on its way: these rows are judged against it
        running_out = not self.plan_ends_run and step >= plan.end - REPLAN_BEFORE_END
        if running_out or lr_moved(lr, plan.at(step)):
            self.replan_wanted = True

    def _steps(self, chunk: StepChunk) -> list[AnyRecord]:
        # This loop is the sender's per-record cost (CPU the training thread may wait
        # for, through the GIL): locals, no helper calls.
        values = chunk.packed.floats()
        job, run, seq = self.job, self.run_id, self._seq
        self._seq += len(chunk.rows)
        steps: list[AnyRecord] = []
        for (step, wall_time, lrs, *_), loss, grad_norm, loss_scale, update, ratio in zip(
            chunk.rows, *(values[i::VALUES_PER_ROW] for i in range(VALUES_PER_ROW)), strict=True
        ):
            seq += 1
            lrs = [float(lr) for lr in lrs]  # group LRs may be tensors (capturable optimizers)
            group_lrs = lrs if len(lrs) > 1 and lrs.count(lrs[0]) != len(lrs) else None
            steps.append(
                Step(
                    job=job,
                    run=run,
                    seq=seq,
                    step=step,
                    wall_time=wall_time,
                    lr=lrs[0],
                    group_lrs=group_lrs,
                    loss=loss,
                    grad_norm=grad_norm,
                    loss_scale=loss_scale,
                    update_norm=update,
                    moment_ratio=ratio,
                )
            )
            if not (loss is None or -INF < loss < INF) or not (
                grad_norm is None or grad_norm < INF
            ):
                # A stored NaN may come back as NULL (SQLite): the event keeps the fact.
                seq += 1
                self._seq += 1
                kind = (
                    "nonfinite_loss"
                    if not (loss is None or -INF < loss < INF)
                    else ("nonfinite_grad_norm")
                )
                steps.append(
                    Event(job=job, run=run, seq=seq, step=step, wall_time=wall_time, kind=kind)
                )
        return steps

    def _add_frame(self, records: list[AnyRecord], sticky: bool = False) -> None:
        frame_id = self._next_frame_id
        self._next_frame_id += 1
        self.stats.records += len(records)
        payload = encode(
            Batch(
                job=self.job,
                run=self.run_id,
                frame_id=frame_id,
                dropped=self.stats.dropped,
                records=records,
            )
        )
        self._frames[frame_id] = _Frame(frame_id, len(records), payload, sticky)
        self._buffered += len(records)
        while self._buffered > self.max_buffered:
            oldest = next((f for f in self._frames.values() if not f.sticky), None)
            if oldest is None:
                break
            self._evict(oldest)

    def _evict(self, frame: _Frame) -> None:
        """Out of memory: into the spool when there is one with room, else dropped."""
        del self._frames[frame.frame_id]
        self._buffered -= frame.records
        self._from_spool.discard(frame.frame_id)
        if self.spool is not None and self.spool.append(frame.payload):
            self.stats.spooled += frame.records
            self.spooled_records += frame.records
        else:
            self.stats.dropped_buffer += frame.records

    # -- the spool (sender thread only) -----------------------------------------------

    def _spool_or_drain(self) -> None:
        """While no daemon answers, frames older than SPOOL_AFTER go to disk; once one
        answers, spooled frames come back a batch at a time, as memory allows."""
        assert self.spool is not None
        now = time.monotonic()
        if not self.connected:
            for frame in list(self._frames.values()):
                if not frame.sticky and now - frame.created_at > SPOOL_AFTER:
                    self._evict(frame)
            return
        while self.spool.frames and self._buffered < self.max_buffered // 2:
            for payload in self.spool.read(16):
                self._readopt(payload)
        if not self.spool.frames and not self._from_spool and self.spool.size:
            self.spool.clear()  # everything it held is acknowledged
            self.spooled_records = 0

    def _readopt(self, payload: bytes) -> None:
        """A spooled frame back into memory under a new frame id (ids are per sender)."""
        try:
            batch = msgspec.msgpack.decode(payload, type=Batch)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.stats.spool_torn_bytes += len(payload)
            return
        frame_id = self._next_frame_id
        self._next_frame_id += 1
        again = encode(msgspec.structs.replace(batch, frame_id=frame_id))
        self._frames[frame_id] = _Frame(frame_id, len(batch.records), again, False)
        self._buffered += len(batch.records)
        self.spooled_records -= len(batch.records)
        self._from_spool.add(frame_id)

    def _adopt_orphans(self) -> None:
        """Spools left by runs that died: their intact frames into our spool, to be sent
        like ours; a torn tail is discarded and counted."""
        assert self.spool is not None
        for path, frames, torn in orphans(self.spool.path.parent):
            if path == self.spool.path:
                continue
            for payload in frames:
                records = _record_count(payload)
                if records is not None and self.spool.append(payload):
                    self.spooled_records += records
            self.stats.spool_torn_bytes += torn
            if torn:
                self._note("torn_spool", f"{path.name}: discarded a torn tail of {torn} bytes")
            path.unlink(missing_ok=True)

    def _close_spool(self) -> None:
        """At exit: whatever is still unacknowledged goes to disk for the next run."""
        assert self.spool is not None
        for frame in list(self._frames.values()):
            self._evict(frame)
        self.spool.close(remove=self.spool.frames == 0)

    def _send_frames(self, sock: zmq.Socket[Any]) -> bool:
        now = time.monotonic()
        sent = False
        frames = list(self._frames.values())
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
            frame = self._frames.pop(reply.frame_id, None) if reply.frame_id is not None else None
            self._from_spool.discard(reply.frame_id or 0)
            if frame is None:
                continue  # the answer to a resent frame already answered (or a garbled id)
            self._buffered -= frame.records
            match reply:
                case Ack():
                    # Every record of the frame is taken care of (stored now, stored
                    # before, or applied to the job) except the ones refused.
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
        for frame in self._frames.values():
            self.stats.rejected += frame.records
        self._frames.clear()
        self._buffered = 0
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
        frame = self._frames.get(frame_id) if frame_id is not None else None
        if frame is not None:
            frame.sent_at = None
        if self._start_record is None or any(f.sticky for f in self._frames.values()):
            return  # already on its way again
        self._note("unknown_job", "the daemon did not know this job; sending its start again")
        self._add_frame([self._start_record], sticky=True)
        self.stats.records -= 1  # the same record again, not a new one
        self._frames.move_to_end(self._next_frame_id - 1, last=False)

    def _note(self, key: str, message: str) -> None:
        """Log each kind of problem once; the counters keep the rest."""
        if key not in self._logged:
            self._logged.add(key)
            log.warning("edgewatch: %s", message)
