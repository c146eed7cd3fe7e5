"""The client's disk spool: frames the daemon has not acknowledged, kept in a local
append-only file while the daemon is unreachable, so that a long outage costs neither
memory nor records. Only the sender thread touches it; the training thread never waits
on the disk.

File format, one record per frame (the frame's msgpack payload, as sent):

    uint32 little-endian  payload length
    uint32 little-endian  CRC-32 of the payload
    payload bytes

A process killed mid-write, or a full disk, leaves a torn tail: ``read_intact`` keeps
every whole record before the first bad one and reports the bytes it discarded. Each
running sender holds an exclusive ``flock`` on its own file; a file nobody holds belongs
to a run that died, and the next ``attach`` with the same spool folder sends it on
(``orphans``). The daemon ignores what it already has, by (job, run, seq).

Policy when full (``max_bytes``): new frames are not written; they are dropped and
counted like any other overflow (``edgewatch_client_records_dropped_total``).
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

HEADER = struct.Struct("<II")
MAX_PAYLOAD = 64 << 20  # no frame is this large (the daemon caps them at 8 MiB)


def read_intact(path: Path) -> tuple[list[bytes], int]:
    """Every whole frame in the file, and the number of torn bytes after them."""
    data = path.read_bytes()
    frames, offset = [], 0
    while offset + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        payload = data[start : start + length]
        if length > MAX_PAYLOAD or len(payload) < length or zlib.crc32(payload) != crc:
            break
        frames.append(payload)
        offset = start + length
    return frames, len(data) - offset


class Spool:
    """One sender's spool file: append frames, read them back in order, then clear."""

    def __init__(self, folder: Path, job: str, run: int, max_bytes: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", job)[:80]
        self.path = folder / f"{safe}-{run}.spool"
        self.max_bytes = max_bytes
        self._file: IO[bytes] = self.path.open("ab+")
        fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours while we run
        self.size = self._file.seek(0, os.SEEK_END)
        self.read_offset = 0
        self.frames = 0  # written and not yet read back

    def append(self, payload: bytes) -> bool:
        """Write one frame; False (nothing written) when the spool is full."""
        record = HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        if self.size + len(record) > self.max_bytes:
            return False
        self._file.seek(0, os.SEEK_END)
        self._file.write(record)  # buffered: flush() once per sender iteration
        self.size += len(record)
        self.frames += 1
        return True

    def flush(self) -> None:
        """To the OS: survives the death of the process (not a power cut: no fsync)."""
        self._file.flush()

    def read(self, count: int) -> list[bytes]:
        """Up to ``count`` frames not read yet, oldest first."""
        out: list[bytes] = []
        self._file.seek(self.read_offset)
        while len(out) < count and self.frames:
            header = self._file.read(HEADER.size)
            length, _ = HEADER.unpack(header)
            out.append(self._file.read(length))
            self.read_offset += HEADER.size + length
            self.frames -= 1
        return out

    def clear(self) -> None:
        """Everything read back was acknowledged: start the file afresh."""
        self._file.truncate(0)
        self.size = self.read_offset = self.frames = 0

    def close(self, *, remove: bool) -> None:
        self._file.flush()
        if remove:
            self.path.unlink(missing_ok=True)
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def orphans(folder: Path) -> Iterator[tuple[Path, list[bytes], int]]:
    """Spool files of runs that died: (path, intact frames, torn bytes). Each is locked
    while it is read, so that two new runs do not both take it; the caller removes it
    once its frames are framed anew."""
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.spool")):
        try:
            with path.open("rb+") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                frames, torn = read_intact(path)
                yield path, frames, torn
        except BlockingIOError:
            continue  # a live run's spool
        except OSError:
            continue
