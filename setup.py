"""Build step: puts the web page's charting library (uPlot, from the npm registry) into the
package, so that ``pip install edgewatch`` alone serves a page that works offline.

Everything else about the package is in pyproject.toml. Here, ``build_py`` (run for a
wheel, an sdist's build and ``pip install -e .`` alike) first makes sure that
``edgewatch/server/web/vendor/`` holds uPlot's browser build, its stylesheet and its
licence, taken from the npm tarball of the pinned version and checked against the
registry's published SHA-512 before anything is extracted. The files are not committed
(.gitignore): no file of another project lives in this repository. No Node.js is needed.

Offline builds: set ``EDGEWATCH_UPLOT_TARBALL`` to a copy of the tarball
(``npm pack uplot@VERSION`` or the registry URL below, fetched elsewhere); it is checked
against the same hash.

Why uPlot: a canvas chart made for dense time series (about 50 KB, no dependencies, MIT),
drawing 10^6 points per series in tens of milliseconds, maintained since 2019. PyPI has
no package maintained for shipping it; see README "Web page".
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import urllib.request
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

UPLOT_VERSION = "1.6.32"
UPLOT_URL = f"https://registry.npmjs.org/uplot/-/uplot-{UPLOT_VERSION}.tgz"
# The registry's `dist.integrity` for that version (npm view uplot@1.6.32 dist.integrity).
UPLOT_INTEGRITY = (
    "sha512-"
    "KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
)
VENDOR = Path(__file__).resolve().parent / "edgewatch" / "server" / "web" / "vendor"
MEMBERS = {  # tarball member -> file in VENDOR
    "package/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
    "package/dist/uPlot.min.css": "uPlot.min.css",
    "package/LICENSE": "uPlot.LICENSE",
}
STAMP = VENDOR / "VERSION"


def _tarball() -> bytes:
    local = os.environ.get("EDGEWATCH_UPLOT_TARBALL")
    if local:
        return Path(local).read_bytes()
    try:
        with urllib.request.urlopen(UPLOT_URL, timeout=60) as response:
            data: bytes = response.read()
            return data
    except OSError as exc:
        raise SystemExit(
            f"edgewatch build: cannot fetch uPlot {UPLOT_VERSION} from {UPLOT_URL} ({exc}). "
            "Offline, set EDGEWATCH_UPLOT_TARBALL to a copy of that file."
        ) from exc


def fetch_uplot() -> None:
    """Put uPlot's files into VENDOR unless the pinned version is there already."""
    present = all((VENDOR / name).is_file() for name in MEMBERS.values())
    if present and STAMP.is_file() and STAMP.read_text().strip() == UPLOT_VERSION:
        return
    data = _tarball()
    algorithm, expected = UPLOT_INTEGRITY.split("-", 1)
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if digest != expected:
        raise SystemExit(
            f"edgewatch build: the uPlot tarball does not match the registry's {algorithm} "
            f"({digest} != {expected}); refusing to ship it"
        )
    VENDOR.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member, name in MEMBERS.items():
            source = tar.extractfile(member)
            if source is None:
                raise SystemExit(f"edgewatch build: {member} missing from {UPLOT_URL}")
            (VENDOR / name).write_bytes(source.read())
    STAMP.write_text(UPLOT_VERSION + "\n")


class BuildPyWithUPlot(build_py):
    def run(self) -> None:
        fetch_uplot()
        super().run()


setup(cmdclass={"build_py": BuildPyWithUPlot})
