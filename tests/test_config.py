"""Settings: defaults < TOML file < EDGEWATCH_* variables < flags, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgewatch.errors import ConfigError
from edgewatch.server.config import Settings, load_settings


def test_defaults_are_the_documented_ones() -> None:
    s = load_settings(env={})
    assert (s.db, s.bind, s.http) == (
        "sqlite:///edgewatch.db",
        "tcp://127.0.0.1:5555",
        "127.0.0.1:9108",
    )


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "edgewatch.toml"
    config.write_text(
        '[edgewatch]\ndb = "sqlite:///from-file.db"\ncommit-interval = 0.5\nhttp = "0.0.0.0:1"\n'
    )
    env = {
        "EDGEWATCH_CONFIG": str(config),
        "EDGEWATCH_COMMIT_INTERVAL": "0.25",
        "EDGEWATCH_HTTP": "127.0.0.1:2",
    }
    s = load_settings(env=env, overrides={"http": "127.0.0.1:3", "db": None})
    assert s.db == "sqlite:///from-file.db"  # file; the flag was not given
    assert s.commit_interval == 0.25  # environment beats file
    assert s.http == "127.0.0.1:3"  # flag beats environment


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EDGEWATCH_COMMIT_INTERVAL": "soon"}, "commit_interval must be a float"),
        ({"EDGEWATCH_COMMIT_INTERVAL": "0"}, "commit_interval must be > 0"),
        ({"EDGEWATCH_HTTP": "9108"}, "expected HOST:PORT"),
        ({"EDGEWATCH_DB": "edgewatch.db"}, "is not a database URL"),
        ({"EDGEWATCH_BIND": "127.0.0.1:5555"}, "expected a ZeroMQ endpoint"),
    ],
)
def test_bad_settings_say_how_to_fix_them(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


def test_unknown_keys_and_broken_files_are_errors(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_settings(config, env={})
    config.write_text("db = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config, env={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.toml", env={})


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().db = "x"  # type: ignore[misc]
