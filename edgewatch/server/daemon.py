"""The daemon: store, job table, ingest loop and HTTP server wired together.

``Daemon(settings).start()`` runs everything on background threads (tests and embedders
use that); ``serve(settings)`` is what ``edgewatch serve`` runs: start, then wait for
SIGTERM or SIGINT, stop accepting, commit what was received, exit.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

import zmq

from edgewatch.errors import ConfigError
from edgewatch.server.analysis import defer_block_path, load_block_path
from edgewatch.server.config import Settings, is_loopback
from edgewatch.server.counters import DaemonCounters
from edgewatch.server.http import make_http_server, serve_in_thread
from edgewatch.server.ingest import Ingest
from edgewatch.server.metrics import make_registry
from edgewatch.server.retention import Retention
from edgewatch.server.routes import ApiContext
from edgewatch.server.state import JobTable
from edgewatch.server.store import Store

log = logging.getLogger(__name__)


class Daemon:
    """One daemon: its store, job table, ingest loop, HTTP server and retention, started
    by ``start`` on background threads and stopped by ``stop`` (which commits what was
    received first). ``endpoint`` and ``http_url`` say where it listens once started."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        defer_block_path()  # serve first: the rebuild below goes step by step if need be
        self.store = Store(settings.db, copy=settings.pg_copy)
        self.jobs = JobTable()
        self.jobs.load(self.store.jobs())
        self.counters = DaemonCounters()
        self.registry = make_registry(self.jobs, self.counters, settings.job_expiry)
        self.context: zmq.Context[Any] = zmq.Context()
        self.ingest = Ingest(settings, self.store, self.jobs, self.counters, self.context)
        self._rebuild_analyses()
        host, port = settings.http_address()
        try:
            self.http = make_http_server(
                host, port, ApiContext(self.store, self.jobs, self.registry)
            )
        except OSError as exc:
            self.ingest.socket.close(linger=0)
            self.context.term()
            raise ConfigError(
                f"cannot serve HTTP on {settings.http}: {exc.strerror}. Choose another --http."
            ) from exc
        self._stop = threading.Event()
        self._ingest_thread = threading.Thread(
            target=self.ingest.run, args=(self._stop,), name="edgewatch-ingest", daemon=True
        )
        self.retention = Retention(self.store.engine, settings.retain, self.counters)
        self._retention_thread = threading.Thread(
            target=self.retention.loop, args=(self._stop,), name="edgewatch-retention", daemon=True
        )

    def _rebuild_analyses(self) -> None:
        """Take the jobs no other live daemon holds and rebuild the analysis of each
        running one from its checkpoint and the records after it, so that its forecast
        goes on where it stopped (DESIGN.md, "Scaling out"); every other job shows the
        state of its last alert."""
        self.ingest.intake.ownership.start()

    @property
    def endpoint(self) -> str:
        """The ZeroMQ endpoint actually bound (``tcp://127.0.0.1:*`` picks a free port)."""
        return self.ingest.endpoint

    @property
    def http_url(self) -> str:
        host, port = self.http.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Daemon:
        self._ingest_thread.start()
        self._retention_thread.start()
        serve_in_thread(self.http)
        self.ingest.ready.wait(5)
        load_block_path()
        if self.settings.curve_secret_key:
            where = f" (CURVE: clients allowed by {self.settings.curve_clients})"
        elif is_loopback(self.endpoint):
            where = " (loopback only, no CURVE)"
        else:
            where = " (reachable from other hosts, UNENCRYPTED: allow_plaintext is set)"
        log.info(
            "edgewatch daemon: ZeroMQ %s%s, HTTP %s, database %s",
            self.endpoint,
            where,
            self.http_url,
            self.store.engine.url.render_as_string(),
        )
        return self

    def stop(self, timeout: float = 8.0) -> None:
        """Stop accepting, commit and acknowledge what was received, release everything."""
        self._stop.set()
        if self._ingest_thread.is_alive():
            self._ingest_thread.join(timeout)
        if self._retention_thread.is_alive():
            self._retention_thread.join(timeout)
        self.http.shutdown()
        self.http.server_close()
        self.context.term()
        self.store.close()

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    daemon = Daemon(settings).start()
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping (committing what was received)", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping.wait(1.0):
        pass
    started = time.monotonic()
    daemon.stop()
    log.info("stopped in %.2fs", time.monotonic() - started)
    return 0
