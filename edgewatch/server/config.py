"""Daemon settings: one frozen dataclass fed by defaults, a TOML file, ``EDGEWATCH_*``
variables and command-line flags, in that order of precedence (later wins).

Every field maps onto all three sources under the same name: ``commit_interval`` is
``commit_interval = 0.1`` in the TOML file, ``EDGEWATCH_COMMIT_INTERVAL=0.1`` in the
environment and ``--commit-interval 0.1`` on the command line.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgewatch.errors import ConfigError
from edgewatch.monitor.forecast import DEFAULT_SETTINGS, PredictorSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "EDGEWATCH_"
TUNED = {
    "margin": "alarm ratio over max(1, sustained level)",
    "horizon": "steps ahead from which a forecast crossing is approaching",
    "loss_excursion": "loss over its running minimum that is unstable",
    "grad_excursion": "gradient norm over its baseline that is approaching (inf: off)",
    "update_excursion": "update norm over its baseline that is approaching (inf: off)",
    "moment_excursion": "Adam's moment ratio over its baseline that is approaching (inf: off)",
    "direction_margin": "like the margin, for the curvature along the update (inf: off)",
    "critical_margin": "like the margin, for the critical sharpness (inf: off)",
}
"""The predictor's knobs that bench/predict tunes: daemon settings ``forecast_<name>``."""
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclasses.dataclass(frozen=True)
class Settings:
    db: str = "sqlite:///edgewatch.db"
    """SQLAlchemy URL: ``sqlite:///FILE`` (default, WAL) or ``postgresql+psycopg://user@host/db``."""
    bind: str = "tcp://127.0.0.1:5555"
    """ZeroMQ endpoint the ROUTER socket binds to; clients connect here."""
    http: str = "127.0.0.1:9108"
    """HOST:PORT of the HTTP server (``/metrics``, ``/healthz``, ``/api/``)."""
    commit_interval: float = 0.1
    """Seconds received records may wait before they are committed and acknowledged."""
    commit_rows: int = 20_000
    """Commit as soon as this many records are waiting, whatever the interval."""
    max_frame_bytes: int = 8 * 1024 * 1024
    """Frames larger than this are rejected (``oversized``)."""
    job_expiry: float = 3600.0
    """Seconds after its last record that a job's series leave ``/metrics``."""
    log_level: str = "INFO"
    curve_secret_key: str = ""
    """The daemon's CURVE certificate (``edgewatch keygen server`` writes
    ``server.key_secret``): set, every connection is encrypted and authenticated."""
    curve_clients: str = ""
    """With CURVE: the folder of allowed clients' public certificates (``NAME.key``)."""
    allow_plaintext: bool = False
    """Bind a non-loopback ZeroMQ endpoint without CURVE (unencrypted, anyone may send)."""
    forecast_margin: float = DEFAULT_SETTINGS.margin
    """Alarm at this forecast ratio × max(1, sustained level); 1.0 is the quadratic's limit
    (monitor/forecast.py; the default is tuned in bench/predict)."""
    forecast_horizon: int = DEFAULT_SETTINGS.horizon
    """A crossing forecast this many steps ahead or nearer makes a job ``approaching``."""
    forecast_loss_excursion: float = DEFAULT_SETTINGS.loss_excursion
    """Loss (short average) over its running minimum from which a job is ``unstable``."""
    forecast_grad_excursion: float = DEFAULT_SETTINGS.grad_excursion
    """Gradient norm over its baseline that makes a job ``approaching`` (inf: off)."""
    forecast_update_excursion: float = DEFAULT_SETTINGS.update_excursion
    """Update norm over its baseline that makes a job ``approaching`` (inf: off)."""
    forecast_moment_excursion: float = DEFAULT_SETTINGS.moment_excursion
    """Adam's moment ratio over its baseline that makes a job ``approaching`` (inf: off)."""
    forecast_direction_margin: float = DEFAULT_SETTINGS.direction_margin
    """Like the margin, for the curvature along the last update (inf: off)."""
    forecast_critical_margin: float = DEFAULT_SETTINGS.critical_margin
    """Like the margin, for the critical sharpness (inf: off)."""

    def predictor(self) -> PredictorSettings:
        return dataclasses.replace(
            DEFAULT_SETTINGS, **{name: getattr(self, "forecast_" + name) for name in TUNED}
        )

    def __post_init__(self) -> None:
        if not self.db or "://" not in self.db:
            raise ConfigError(
                f"db={self.db!r} is not a database URL; use sqlite:///edgewatch.db or "
                "postgresql+psycopg://user@host/dbname"
            )
        if "://" not in self.bind:
            raise ConfigError(
                f"bind={self.bind!r}: expected a ZeroMQ endpoint like tcp://127.0.0.1:5555"
            )
        self.http_address()  # validates
        if bool(self.curve_secret_key) != bool(self.curve_clients):
            raise ConfigError(
                "CURVE needs both curve_secret_key (the daemon's NAME.key_secret) and "
                "curve_clients (a folder of allowed clients' NAME.key files)"
            )
        if not self.curve_secret_key and not self.allow_plaintext and not is_loopback(self.bind):
            raise ConfigError(
                f"bind={self.bind!r} is reachable from other hosts, and without CURVE anyone "
                "there could send records, unencrypted. Set curve_secret_key and "
                "curve_clients (see `edgewatch keygen`), or allow_plaintext=true on a "
                "network you trust."
            )
        for name in ("commit_interval", "job_expiry"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        for name in (f"forecast_{n}" for n in TUNED if n not in ("horizon", "margin")):
            if not getattr(self, name) >= 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.forecast_margin > 0:
            raise ConfigError(f"forecast_margin must be > 0, got {self.forecast_margin!r}")
        for name in ("commit_rows", "max_frame_bytes", "forecast_horizon"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    def http_address(self) -> tuple[str, int]:
        host, sep, port = self.http.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"http={self.http!r}: expected HOST:PORT like 127.0.0.1:9108")
        return host or "127.0.0.1", int(port)


def is_loopback(endpoint: str) -> bool:
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return endpoint.startswith(("ipc://", "inproc://")) or host in ("127.0.0.1", "localhost", "::1")


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = type(getattr(Settings, name))
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is bool and isinstance(value, str) and value.lower() in _BOOLEANS:
        return _BOOLEANS[value.lower()]
    try:
        if kind is int and isinstance(value, str | int | float):
            return int(value)
        if kind is float and isinstance(value, str | int | float):
            return float(value)
        if kind is str:
            return str(value)
    except ValueError:
        pass
    raise ConfigError(f"{source}: {name} must be a {kind.__name__}, got {value!r}")


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge defaults < TOML file < environment < overrides (flags) into Settings."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    config_file = config_file or env.get(ENV_PREFIX + "CONFIG")
    if config_file:
        path = Path(config_file)
        try:
            table = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        table = table.get("edgewatch", table)  # both a bare file and an [edgewatch] table
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in FIELDS:
                raise ConfigError(f"{path}: unknown setting {key!r}; known: {', '.join(FIELDS)}")
            values[name] = _coerce(name, value, str(path))
    for name in FIELDS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _coerce(name, raw, ENV_PREFIX + name.upper())
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
    return Settings(**values)
