"""``edgewatch plot JOB -o FILE.png`` draws a job from the daemon's API."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DaemonFactory
from test_prediction import QUADRATIC

from edgewatch.cli import main
from edgewatch_testkit.toy import warmup_past_the_edge


def test_plot_writes_a_png_of_the_job(
    make_daemon: DaemonFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = make_daemon(**QUADRATIC)
    warmup_past_the_edge("drawn", daemon.endpoint)
    image = tmp_path / "drawn.png"
    assert main(["plot", "drawn", "-o", str(image), "--server", daemon.http_url]) == 0
    assert f"wrote {image}" in capsys.readouterr().out
    data = image.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 50_000  # four panels drawn


def test_plot_of_an_unknown_job_says_so(
    make_daemon: DaemonFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = make_daemon()
    assert main(["plot", "nope", "-o", str(tmp_path / "x.png"), "--server", daemon.http_url]) == 2
    assert "unknown job 'nope'" in capsys.readouterr().err
