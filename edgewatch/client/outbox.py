"""Frames the daemon has not acknowledged yet: held in memory, bounded, moved to the disk
spool while no daemon answers (or past the bound), and read back from it once one does.

Used by the sender thread alone. Frame ids are this process's own: a frame read back from
a spool (ours, or one a dead run left behind) is sent under a new id.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable

import msgspec

from edgewatch.client.spool import Spool, orphans
from edgewatch.schemas import AnyRecord, Batch, encode

SPOOL_AFTER = 2.0  # seconds a frame waits for a daemon before it goes to the spool


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


@dataclasses.dataclass
class Frame:
    frame_id: int
    records: int
    payload: bytes
    sticky: bool  # holds the JobStart: never dropped
    repeat: bool = False  # records already acknowledged once (the JobStart sent again)
    sent_at: float | None = None
    created_at: float = dataclasses.field(default_factory=time.monotonic)


def _record_count(payload: bytes) -> int | None:
    try:
        return len(msgspec.msgpack.decode(payload, type=Batch).records)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class Outbox:
    """The unacknowledged frames, oldest first, with at most ``max_buffered`` records in
    memory; the JobStart's frame (sticky) is never evicted."""

    def __init__(
        self, job: str, run: int, max_buffered: int, stats: SenderStats, spool: Spool | None
    ) -> None:
        self.job, self.run = job, run
        self.max_buffered = max_buffered
        self.stats = stats
        self.spool = spool
        self.frames: collections.OrderedDict[int, Frame] = collections.OrderedDict()
        self.buffered = 0  # records in frames
        self.spooled_records = 0  # records waiting in the spool (not in memory)
        self._from_spool: set[int] = set()  # frame ids read back from the spool, unacked
        self._next_frame_id = 1

    def _new_id(self) -> int:
        frame_id = self._next_frame_id
        self._next_frame_id += 1
        return frame_id

    def add(self, records: list[AnyRecord], sticky: bool = False) -> Frame:
        """Frame ``records``; the oldest frames leave memory while past the bound."""
        frame_id = self._new_id()
        self.stats.records += len(records)
        payload = encode(
            Batch(
                job=self.job,
                run=self.run,
                frame_id=frame_id,
                dropped=self.stats.dropped,
                records=records,
            )
        )
        frame = self.frames[frame_id] = Frame(frame_id, len(records), payload, sticky)
        self.buffered += len(records)
        while self.buffered > self.max_buffered:
            oldest = next((f for f in self.frames.values() if not f.sticky), None)
            if oldest is None:
                break
            self.evict(oldest)
        return frame

    def add_first(self, record: AnyRecord) -> None:
        """``record`` (a JobStart sent again) in a sticky frame ahead of all others."""
        frame = self.add([record], sticky=True)
        self.stats.records -= 1  # the same record again, not a new one
        frame.repeat = True
        self.frames.move_to_end(frame.frame_id, last=False)

    def has_sticky(self) -> bool:
        return any(f.sticky for f in self.frames.values())

    def pop(self, frame_id: int | None) -> Frame | None:
        """The acknowledged (or refused) frame, out of the outbox; None if unknown."""
        self._from_spool.discard(frame_id or 0)
        frame = self.frames.pop(frame_id, None) if frame_id is not None else None
        if frame is not None:
            self.buffered -= frame.records
        return frame

    def clear(self) -> int:
        """Forget every frame in memory; returns the number of records they held."""
        records = self.buffered
        self.frames.clear()
        self._from_spool.clear()
        self.buffered = 0
        return records

    def resend_all(self) -> None:
        """Every frame in memory goes again at the next send (a new daemon)."""
        for frame in self.frames.values():
            frame.sent_at = None

    def evict(self, frame: Frame) -> None:
        """Out of memory: into the spool when there is one with room, else dropped."""
        del self.frames[frame.frame_id]
        self.buffered -= frame.records
        self._from_spool.discard(frame.frame_id)
        if self.spool is not None and self.spool.append(frame.payload):
            self.stats.spooled += frame.records
            self.spooled_records += frame.records
        else:
            self.stats.dropped_buffer += frame.records

    # -- the spool --------------------------------------------------------------------

    def spool_or_drain(self, connected: bool) -> None:
        """While no daemon answers, frames older than SPOOL_AFTER go to disk; once one
        answers, spooled frames come back a batch at a time, as memory allows."""
        if self.spool is None:
            return
        if not connected:
            now = time.monotonic()
            for frame in list(self.frames.values()):
                if not frame.sticky and now - frame.created_at > SPOOL_AFTER:
                    self.evict(frame)
        else:
            while self.spool.frames and self.buffered < self.max_buffered // 2:
                for payload in self.spool.read(16):
                    self._readopt(payload)
            if not self.spool.frames and not self._from_spool and self.spool.size:
                self.spool.clear()  # everything it held is acknowledged
                self.spooled_records = 0
        self.spool.flush()  # one write to the OS per iteration, not per frame

    def _readopt(self, payload: bytes) -> None:
        """A spooled frame back into memory under a new frame id."""
        try:
            batch = msgspec.msgpack.decode(payload, type=Batch)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.stats.spool_torn_bytes += len(payload)
            return
        frame_id = self._new_id()
        again = encode(msgspec.structs.replace(batch, frame_id=frame_id))
        self.frames[frame_id] = Frame(frame_id, len(batch.records), again, False)
        self.buffered += len(batch.records)
        self.spooled_records -= len(batch.records)
        self._from_spool.add(frame_id)

    def adopt_orphans(self, note: Callable[[str, str], None]) -> None:
        """Spools left by runs that died: their intact frames into our spool, to be sent
        like ours; a torn tail is discarded and counted."""
        if self.spool is None:
            return
        for path, frames, torn in orphans(self.spool.path.parent):
            if path == self.spool.path:
                continue
            for payload in frames:
                records = _record_count(payload)
                if records is not None and self.spool.append(payload):
                    self.spooled_records += records
            self.stats.spool_torn_bytes += torn
            if torn:
                note("torn_spool", f"{path.name}: discarded a torn tail of {torn} bytes")
            path.unlink(missing_ok=True)

    def close_spool(self) -> None:
        """At exit: whatever is still unacknowledged goes to disk for the next run."""
        if self.spool is None:
            return
        for frame in list(self.frames.values()):
            self.evict(frame)
        self.spool.close(remove=self.spool.frames == 0)
