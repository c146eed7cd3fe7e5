"""The web page's files, served from the package (``server/web/``) on the HTTP port.

    GET /                  the jobs page
    GET /jobs/{job_id}     one job's page (the id URL-quoted, as in /api/jobs/{job_id})
    GET /static/{file}     its scripts and styles; ``static/vendor/`` holds uPlot, put
                           there by the package build (setup.py), never by a CDN

The pages read the JSON API from the browser, so they show what the API shows and need no
server-side rendering. Job ids, reasons and every other value are put into the page as
text, never as HTML: a client names its jobs, and a page must not run what they contain.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().with_name("web")
CHART_LIBRARY = WEB_DIR / "vendor" / "uPlot.iife.min.js"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Everything from this origin, nothing from anywhere else, no framing: the page works
# offline and a proxied deployment cannot be embedded by another site.
HTML_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
STATIC_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


class NotFound(Exception):
    pass


def page(parts: list[str]) -> tuple[str, bytes, dict[str, str]] | None:
    """(content type, body, headers) for a web path, None when it is not one of ours.

    Raises NotFound for a static file that does not exist."""
    if not parts:
        return _file(WEB_DIR / "index.html", HTML_HEADERS)
    if parts[0] == "jobs" and len(parts) == 2:
        return _file(WEB_DIR / "job.html", HTML_HEADERS)
    if parts[0] == "static" and len(parts) > 1:
        try:
            path = WEB_DIR.joinpath(*parts[1:]).resolve()
        except (OSError, ValueError):  # a NUL byte, a loop of links
            raise NotFound("/".join(parts[1:])) from None
        if not path.is_relative_to(WEB_DIR) or not path.is_file():
            raise NotFound("/".join(parts[1:]))
        return _file(path, STATIC_HEADERS)
    return None


def _file(path: Path, headers: dict[str, str]) -> tuple[str, bytes, dict[str, str]]:
    content_type = CONTENT_TYPES.get(path.suffix)
    if content_type is None:
        raise NotFound(path.name)
    return content_type, path.read_bytes(), headers


def check_chart_library() -> bool:
    """Whether the build put uPlot in place; says how to fix it when not."""
    if CHART_LIBRARY.is_file():
        return True
    log.warning(
        "the web page's charting library is missing (%s): the charts will not draw. "
        "Reinstall edgewatch (pip install edgewatch, or pip install -e . in a checkout); "
        "its build fetches uPlot from the npm registry",
        CHART_LIBRARY,
    )
    return False
