"""The built wheel, installed into a fresh virtual environment by pip alone, serves and
runs the demo: nothing it needs may live only in the checkout.

How it installs: the wheel is built by ``pip wheel`` (build isolation: the
``[build-system]`` requirement is fetched as a user's pip would) from a copy of the
source, and installed with its dependencies resolved by pip from the indexes pip is
configured with (``pip config list``; on the project's machines local file indexes, so
no network is needed). ``edgewatch serve`` then runs in that environment, which has no
torch: the daemon must not need it. For ``edgewatch demo``, whose training run needs
torch, the environment is given the test's own site-packages as a path of last resort
(a ``.pth`` file) rather than installing torch again, which would take longer than the
rest of the test; the wheel's own files still come first.

Every command runs from a temporary directory, so the checkout is not on ``sys.path``.
About a minute on 2 idle cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from pathlib import Path

import pytest

from edgewatch.server.process import wait_healthy
from edgewatch_testkit.net import free_port

ROOT = Path(__file__).resolve().parent.parent
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".demo",
    "out", "*.db", "*.db-*",
)  # fmt: skip


def run(args: list[str | Path], cwd: Path, timeout: float = 240) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.mark.slow
def test_the_installed_wheel_serves_and_runs_the_demo(tmp_path: Path) -> None:
    vendor = ROOT / "edgewatch" / "server" / "web" / "vendor"
    if not (vendor / "uPlot.iife.min.js").is_file():
        pytest.skip(f"{vendor} is empty: `make` (pip install -e .) fetches uPlot into it first")
    source, dist, venv, work = (tmp_path / d for d in ("src", "dist", "venv", "work"))
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    work.mkdir()
    pip = ["--disable-pip-version-check", "--retries", "1", "--timeout", "30"]

    built = run([sys.executable, "-m", "pip", "wheel", *pip, "--no-deps", "-w", dist, source], work)
    assert "SetuptoolsDeprecationWarning" not in built, built
    (wheel,) = dist.glob("edgewatch-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        assert "License-Expression: Apache-2.0" in z.read(metadata).decode().splitlines()
    assert "edgewatch/server/web/vendor/uPlot.iife.min.js" in names
    # The tests' and benchmarks' kit stays in the checkout.
    assert not [n for n in names if n.startswith(("edgewatch_testkit/", "bench/", "tests/"))]
    assert any(n.startswith("edgewatch/server/migrations/versions/") for n in names)

    run([sys.executable, "-m", "venv", venv], work)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", *pip, wheel], work, timeout=300)
    where = run([python, "-c", "import edgewatch; print(edgewatch.__file__)"], work)
    assert Path(where.strip()).is_relative_to(venv), where
    no_torch = subprocess.run([python, "-c", "import torch"], cwd=work, capture_output=True)
    assert no_torch.returncode != 0, "torch is not a dependency of the daemon"

    http = f"127.0.0.1:{free_port()}"
    daemon = subprocess.Popen(
        [venv / "bin" / "edgewatch", "serve", "--db", f"sqlite:///{work / 'serve.db'}",
         "--bind", f"tcp://127.0.0.1:{free_port()}", "--http", http],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_healthy(f"http://{http}", daemon, timeout=60)
        with urllib.request.urlopen(f"http://{http}/static/vendor/uPlot.iife.min.js") as page:
            assert page.status == 200 and b"uPlot" in page.read()
    finally:
        daemon.terminate()
        assert daemon.wait(30) == 0

    site = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], work)
    (Path(site.strip()) / "zz-test-torch.pth").write_text(sysconfig.get_path("purelib") + "\n")
    where = run([python, "-c", "import torch, edgewatch; print(edgewatch.__file__)"], work)
    assert Path(where.strip()).is_relative_to(venv), where  # still the wheel's, not the checkout's
    shown = run([venv / "bin" / "edgewatch", "demo", "--workdir", work / "demo"], work)
    assert "== what edgewatch saw" in shown and "APPROACHING" in shown, shown
    assert "daemon stopped (exit status 0)" in shown, shown
