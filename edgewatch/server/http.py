"""The daemon's read-only HTTP server: the socket side of ``server/routes.py``, which
says what each GET answers (the list of paths is there). Here: the request threads,
gzip for a client that accepts it, HEAD, the refusal of anything but GET and HEAD, and
the thread that keeps long jobs' chart summaries built.

To expose the API beyond loopback, put it behind a reverse proxy that authenticates
(README).
"""

from __future__ import annotations

import gzip
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec

from edgewatch.schemas import views
from edgewatch.server import pages
from edgewatch.server.routes import JSON, ApiContext, Response, route

log = logging.getLogger(__name__)

WARM_MIN_STEPS = 100_000
"""Jobs this long get their chart summary built in the background (blocks.py)."""
WARM_INTERVAL = 2.0
GZIP_MIN_BYTES = 1024
_json = msgspec.json.Encoder()


class Handler(BaseHTTPRequestHandler):
    server_version = "edgewatch"
    ctx: ApiContext  # set on the subclass made by EdgewatchHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        try:
            answer = route(self.ctx, self.path)
        except Exception:  # a bug must cost one request, never the server
            log.exception("error serving %s", self.path)
            answer = Response(500, JSON, _json.encode(views.Error("internal error")))
        body, headers = answer.body, dict(answer.headers)
        if answer.compress and len(body) >= GZIP_MIN_BYTES:
            headers["Vary"] = "Accept-Encoding"
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                body = gzip.compress(body, compresslevel=5)
                headers["Content-Encoding"] = "gzip"
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _refuse(self) -> None:
        body = _json.encode(views.Error("the edgewatch API is read-only"))
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Type", JSON)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse


class EdgewatchHTTPServer(ThreadingHTTPServer):
    """The HTTP server, and the thread that keeps long jobs' chart summaries built (so
    that their page loads at once); ``server_close`` stops both."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], ctx: ApiContext) -> None:
        self.ctx = ctx
        # Before binding: a failed bind calls server_close, which reads them.
        self._closing = threading.Event()
        self._warmer: threading.Thread | None = None
        handler = type("EdgewatchHandler", (Handler,), {"ctx": ctx})
        super().__init__(address, handler)

    def start_warming(self) -> None:
        self._warmer = threading.Thread(target=self._warm, name="edgewatch-series", daemon=True)
        self._warmer.start()

    def _warm(self) -> None:
        while not self._closing.is_set():
            long_jobs = [
                s for s in self.ctx.jobs.snapshot() if (s.last_step or 0) >= WARM_MIN_STEPS
            ]
            long_jobs.sort(key=lambda s: s.last_seen, reverse=True)
            try:
                self.ctx.series.warm(((s.pk, s.records) for s in long_jobs), self._closing)
            except Exception:  # the page then builds the summary itself, more slowly
                log.exception("building chart summaries")
            self._closing.wait(WARM_INTERVAL)

    def server_close(self) -> None:
        self._closing.set()
        if self._warmer is not None:
            self._warmer.join(30)
        super().server_close()


def make_http_server(host: str, port: int, ctx: ApiContext) -> EdgewatchHTTPServer:
    pages.check_chart_library()
    return EdgewatchHTTPServer((host, port), ctx)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="edgewatch-http", daemon=True)
    thread.start()
    if isinstance(server, EdgewatchHTTPServer):
        server.start_warming()
    return thread
