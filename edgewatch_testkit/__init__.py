"""What the tests (``tests/``) and the benchmarks (``bench/``) share, defined once: a free
port (``net``), the nanoGPT-shaped model and its loss (``gpt``), the character corpus
(``corpus``), the float64 problems with exact Hessians (``curvature_problems``), the
training loops with known answers (``toy``), private Prometheus and Alertmanager
processes (``stack``) and a headless Chromium (``browser``).

It is not part of the product: the wheel leaves it out (pyproject.toml lists the
packages it ships) and ``edgewatch`` never imports it. It is found from the checkout's
root: pytest puts the root on the import path (``pythonpath`` in pyproject.toml), the
benchmarks run as modules from the root (``python -m bench.perf.ingest``), and a child
Python that a test or a benchmark starts gets the root through ``child_env()``.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment with the checkout's root first on PYTHONPATH (and
    ``extra`` set), for a child Python that imports this kit or ``bench``."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, **extra, "PYTHONPATH": os.pathsep.join(paths)}


__all__ = ["ROOT", "child_env"]
