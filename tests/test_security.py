"""CURVE: encryption and an allow-list of client keys; loopback-only without it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import DaemonFactory, metric

from edgewatch.cli import main
from edgewatch.errors import ConfigError
from edgewatch.server import Settings
from edgewatch_testkit.toy import run_toy


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """server, alice (allowed) and mallory (not allowed) certificates."""
    for name in ("server", "alice", "mallory"):
        assert main(["keygen", name, "--dir", str(tmp_path / "keys")]) == 0
    assert "secret: keep it private" in capsys.readouterr().out
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "alice.key").write_bytes((tmp_path / "keys" / "alice.key").read_bytes())
    return tmp_path


def test_an_allowed_client_stores_and_an_unknown_key_stores_nothing(
    make_daemon: DaemonFactory, keys: Path
) -> None:
    k = keys / "keys"
    daemon = make_daemon(
        curve_secret_key=str(k / "server.key_secret"), curve_clients=str(keys / "allowed")
    )
    good = run_toy("alice-job", daemon.endpoint, 50, server_key=str(k / "server.key"),
                   client_key=str(k / "alice.key_secret"))  # fmt: skip
    assert good.stats["unacknowledged"] == 0 and daemon.store.count("steps") == 50
    bad = run_toy("mallory-job", daemon.endpoint, 50, server_key=str(k / "server.key"),
                  client_key=str(k / "mallory.key_secret"), close_timeout=3)  # fmt: skip
    plain = run_toy("plain-job", daemon.endpoint, 50, close_timeout=3)
    assert bad.stats["acknowledged"] == 0 and plain.stats["acknowledged"] == 0
    assert [j["job_id"] for j in daemon.store.jobs()] == ["alice-job"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not metric(
        daemon, "edgewatch_messages_rejected_total", reason="unauthorized"
    ):
        time.sleep(0.1)
    assert (metric(daemon, "edgewatch_messages_rejected_total", reason="unauthorized") or 0) >= 1
    assert (metric(daemon, "edgewatch_messages_rejected_total", reason="handshake") or 0) >= 1


def test_without_curve_only_loopback_unless_told_otherwise(keys: Path) -> None:
    with pytest.raises(ConfigError, match="reachable from other hosts"):
        Settings(bind="tcp://0.0.0.0:5555")
    assert Settings(bind="tcp://0.0.0.0:5555", allow_plaintext=True).allow_plaintext
    with pytest.raises(ConfigError, match="needs both"):
        Settings(curve_secret_key=str(keys / "keys" / "server.key_secret"))
    Settings(  # CURVE makes any interface acceptable
        bind="tcp://0.0.0.0:5555",
        curve_secret_key=str(keys / "keys" / "server.key_secret"),
        curve_clients=str(keys / "allowed"),
    )


def test_keygen_refuses_to_overwrite(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "alice", "--dir", str(keys / "keys")]) == 2
    assert "exists" in capsys.readouterr().err
    assert oct((keys / "keys" / "alice.key_secret").stat().st_mode)[-3:] == "600"
