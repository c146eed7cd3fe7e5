"""The ingest loop: the ZeroMQ ROUTER socket, moving bytes to and from the intake.

One thread owns the ROUTER socket (ZeroMQ sockets are not thread-safe) and the commits
(``writer.py`` says why no second thread). What a frame means, what is committed and
what each reply says is ``intake.py``'s business; this loop only moves bytes:

    receive frames --> Intake.receive --> replies out
    every ``commit_interval`` seconds, or at ``commit_rows`` pending records:
        Intake.commit --> replies (an Ack per committed frame) out
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import zmq

from edgewatch.errors import ConfigError
from edgewatch.schemas import encode
from edgewatch.server.analysis import RunAnalysis
from edgewatch.server.config import Settings
from edgewatch.server.counters import DaemonCounters
from edgewatch.server.intake import Intake, Reply
from edgewatch.server.leases import daemon_name
from edgewatch.server.security import CurveServer
from edgewatch.server.state import JobTable
from edgewatch.server.store import Store

log = logging.getLogger(__name__)


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
        # Named after the endpoint bound, which no other live process holds (leases.py).
        self.intake = Intake(settings, store, jobs, counters, daemon_name(self.endpoint))
        self.ready = threading.Event()

    @property
    def analyses(self) -> dict[int, RunAnalysis]:
        """The current run's forecast of each job, by job pk (the daemon's rebuild fills it)."""
        return self.intake.analyses

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
                    self.intake.drop_pending()
        finally:
            self._shutdown()

    def _iteration(self, poller: zmq.Poller) -> None:
        timeout = 100.0
        deadline = self.intake.deadline
        if deadline is not None:
            timeout = max(0.0, min(timeout, (deadline - time.monotonic()) * 1000))
        if poller.poll(int(timeout)):
            self._drain(max_frames=1000)
            if self.curve is not None:
                for reason in self.curve.failed_handshakes():
                    self.intake.count_rejected(reason, "refused a client's CURVE handshake")
        deadline = self.intake.deadline
        if deadline is not None and time.monotonic() >= deadline:
            self.commit()
        self.intake.tick()

    def _drain(self, max_frames: int) -> int:
        received = 0
        while received < max_frames:
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            received += 1
            self._send(self.intake.receive(parts[0], parts[1:]))
            if self.intake.pending_rows >= self.settings.commit_rows:
                self.commit()
        return received

    def commit(self) -> None:
        """Commit the pending frames in one transaction, then acknowledge them."""
        self._send(self.intake.commit())

    def _shutdown(self) -> None:
        """Stop accepting, commit what was received, acknowledge it, close."""
        with contextlib.suppress(zmq.ZMQError):
            self.socket.unbind(self.endpoint)
        try:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and self._drain(max_frames=1000):
                pass
            self.commit()
            self.intake.ownership.close()
        finally:
            self.socket.close(linger=1000)
            if self.curve is not None:
                self.curve.stop()

    def _send(self, replies: list[Reply]) -> None:
        # A client gone or not reading misses its Ack; it resends and gets a duplicate Ack.
        for identity, message in replies:
            with contextlib.suppress(zmq.ZMQError):
                self.socket.send_multipart([identity, encode(message)], zmq.NOBLOCK)
