"""Daemon settings: one frozen dataclass fed by defaults, a TOML file, ``EDGEWATCH_*``
variables and command-line flags, in that order of precedence (later wins).

Every field maps onto all three sources under the same name: ``commit_interval`` is
``commit_interval = 0.1`` in the TOML file, ``EDGEWATCH_COMMIT_INTERVAL=0.1`` in the
environment and ``--commit-interval 0.1`` on the command line.

The predictor's knobs are ``Settings.forecast``, a ``PredictorSettings`` (defined once, in
monitor/settings.py), and each of its fields maps the same way: ``margin`` is
``margin = 1.5`` in the file's ``[forecast]`` table (or ``forecast_margin = 1.5`` at the
top), ``EDGEWATCH_FORECAST_MARGIN=1.5`` and ``--forecast-margin 1.5``; ``forecast_flags``
adds a flag per field to a parser (``serve`` and ``replay``). Later sources win field by
field: a flag for the margin leaves the file's horizon in force.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgewatch.errors import ConfigError
from edgewatch.monitor.settings import DEFAULT_SETTINGS, PredictorSettings, field_docs, problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "EDGEWATCH_"
FORECAST = "forecast_"
"""Prefix of the predictor's fields as daemon settings: variables, flags, top-level keys."""
PREDICTOR_FIELDS = tuple(f.name for f in dataclasses.fields(PredictorSettings))
TUNED = ("provisional_level", "margin", "horizon", "loss_excursion", "grad_excursion",
         "update_excursion", "moment_excursion", "direction_margin", "critical_margin")  # fmt: skip
"""The fields bench/instability/predict.py tunes; ``replay`` also takes them without
``--forecast-``."""
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
    pg_copy: bool = True
    """On PostgreSQL, write step records with COPY (resent ones through a temporary
    table: the database user needs the TEMPORARY privilege, which PostgreSQL grants by
    default); false writes them with ``INSERT ... SELECT FROM unnest(...)``, slower, for
    a proxy that does not pass COPY through and for bench/perf/ingest.py's comparison."""
    max_frame_bytes: int = 8 * 1024 * 1024
    """Frames larger than this are rejected (``oversized``)."""
    job_expiry: float = 3600.0
    """Seconds after its last record that a job's series leave ``/metrics``."""
    lease_seconds: float = 10.0
    """Seconds a daemon's hold on a job's analysis lasts without a commit of the job's
    records; after that another daemon sharing the database may take the job over."""
    checkpoint_seconds: float = 10.0
    """Seconds between checkpoints of a job's analysis (written with the commit of its
    records): a restart or a takeover replays at most about this much of a job."""
    retain: float = 0.0
    """Days of raw step records kept; 0 keeps everything. Older steps are dropped (on
    PostgreSQL a day's partition at a time, on SQLite those of finished jobs), while each
    job's block summaries, sharpness estimates, events and alerts stay (README, "Retention")."""
    log_level: str = "INFO"
    curve_secret_key: str = ""
    """The daemon's CURVE certificate (``edgewatch keygen server`` writes
    ``server.key_secret``): set, every connection is encrypted and authenticated."""
    curve_clients: str = ""
    """With CURVE: the folder of allowed clients' public certificates (``NAME.key``)."""
    allow_plaintext: bool = False
    """Bind a non-loopback ZeroMQ endpoint without CURVE (unencrypted, anyone may send)."""
    forecast: PredictorSettings = DEFAULT_SETTINGS
    """The predictor's knobs (monitor/settings.py): the ``[forecast]`` table,
    ``EDGEWATCH_FORECAST_<FIELD>``, ``--forecast-<field>``. The keywords
    ``forecast_<field>=`` are accepted too (``Settings(forecast_margin=1.0)``)."""

    def predictor(self) -> PredictorSettings:
        return self.forecast

    if not TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any attribute

        def __getattr__(self, name: str) -> Any:
            # The predictor's fields were flat settings once: settings.forecast_margin.
            if name.startswith(FORECAST) and name[len(FORECAST) :] in PREDICTOR_FIELDS:
                return getattr(self.forecast, name[len(FORECAST) :])
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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
        for name in ("commit_interval", "job_expiry", "lease_seconds", "checkpoint_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if not 0 <= self.retain < math.inf:
            raise ConfigError(f"retain must be >= 0 days (0 keeps everything), got {self.retain!r}")
        for name in ("commit_rows", "max_frame_bytes"):
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


def _accept_forecast_keywords(init: Any) -> Any:
    """Settings(forecast_margin=1.0, ...) as before the predictor's fields moved into
    ``forecast``: the keywords replace fields of ``forecast`` (given or the defaults)."""

    @functools.wraps(init)
    def __init__(self: Settings, *args: Any, **kwargs: Any) -> None:
        flat = {k[len(FORECAST) :]: kwargs.pop(k) for k in list(kwargs) if k.startswith(FORECAST)}
        if flat:
            kwargs["forecast"] = dataclasses.replace(
                kwargs.get("forecast", DEFAULT_SETTINGS), **flat
            )
        init(self, *args, **kwargs)

    return __init__


setattr(Settings, "__init__", _accept_forecast_keywords(Settings.__init__))  # noqa: B010
FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.name != "forecast"}


def _coerce(kind: type, name: str, value: Any, source: str) -> Any:
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is bool and isinstance(value, str) and value.lower() in _BOOLEANS:
        return _BOOLEANS[value.lower()]
    try:
        if kind is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if kind is int and isinstance(value, str):
            return int(value)
        if kind is float and isinstance(value, str | int) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str | int | float):
            return str(value)
    except ValueError:
        pass
    a = "a whole number" if kind is int else f"a {kind.__name__}"
    raise ConfigError(f"{source}: {name} must be {a}, got {value!r}")


def _setting(name: str, value: Any, source: str) -> Any:
    return _coerce(type(getattr(Settings, name)), name, value, source)


def _forecast(name: str, value: Any, source: str) -> Any:
    value = _coerce(type(getattr(PredictorSettings, name)), name, value, source)
    message = problem(name, value)
    if message:
        raise ConfigError(f"{source}: {message}")
    return value


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The daemon's keys and the ``[forecast]`` keys of a TOML file."""
    try:
        root = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    table = dict(root.get("edgewatch", root))  # both a bare file and an [edgewatch] table
    # [forecast] beside [edgewatch], or inside it ([edgewatch.forecast]), or in a bare file.
    tables = [table.pop("forecast", {}), root.get("forecast", {}) if "edgewatch" in root else {}]
    if not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: forecast must be a table: [forecast] with margin = 1.5, ...")
    forecast = tables[1] | tables[0]
    values: dict[str, Any] = {}
    predictor: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name.startswith(FORECAST) and name[len(FORECAST) :] in PREDICTOR_FIELDS:
            predictor[name[len(FORECAST) :]] = _forecast(name[len(FORECAST) :], value, str(path))
        elif name in FIELDS:
            values[name] = _setting(name, value, str(path))
        else:
            raise ConfigError(
                f"{path}: unknown setting {key!r}; known: {', '.join(FIELDS)} and a [forecast] "
                "table"
            )
    for key, value in forecast.items():
        name = key.replace("-", "_")
        if name not in PREDICTOR_FIELDS:
            raise ConfigError(
                f"{path}: unknown [forecast] setting {key!r}; known: {', '.join(PREDICTOR_FIELDS)}"
            )
        predictor[name] = _forecast(name, value, f"{path} [forecast]")
    return values, predictor


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge defaults < TOML file < environment < overrides (flags) into Settings.

    ``overrides`` are keyed by setting, the predictor's as ``forecast_<field>``
    (what ``forecast_overrides`` returns); None values are not given."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    predictor: dict[str, Any] = {}
    config_file = config_file or env.get(ENV_PREFIX + "CONFIG")
    if config_file:
        values, predictor = _read_file(Path(config_file))
    for name in FIELDS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _setting(name, raw, ENV_PREFIX + name.upper())
    for name in PREDICTOR_FIELDS:
        variable = f"{ENV_PREFIX}{FORECAST}{name}".upper()
        if env.get(variable) is not None:
            predictor[name] = _forecast(name, env[variable], variable)
    for key, value in (overrides or {}).items():
        flag = f"--{key.replace('_', '-')}"
        if value is None:
            continue
        if key.startswith(FORECAST) and key[len(FORECAST) :] in PREDICTOR_FIELDS:
            predictor[key[len(FORECAST) :]] = _forecast(key[len(FORECAST) :], value, flag)
        else:
            values[key] = _setting(key, value, flag)
    return Settings(**values, forecast=PredictorSettings(**predictor))


def forecast_flags(parser: argparse.ArgumentParser, aliases: bool = False) -> None:
    """A ``--forecast-<field>`` flag per field of PredictorSettings, its help the field's
    docstring; ``aliases``: the tuned fields also as ``--<field>`` (``replay``'s spelling
    before the flags were generated)."""
    group = parser.add_argument_group("the predictor's settings (monitor/settings.py)")
    docs = field_docs()
    for name in PREDICTOR_FIELDS:
        default = getattr(DEFAULT_SETTINGS, name)
        flags = [f"--{FORECAST}{name}".replace("_", "-")]
        if aliases and name in TUNED:
            flags.append(f"--{name.replace('_', '-')}")
        shown = "inf (off)" if default == math.inf else default
        group.add_argument(
            *flags,
            dest=FORECAST + name,
            type=type(default),
            metavar="N" if isinstance(default, int) else "X",
            help=f"{docs[name]} Default {shown}.".replace("%", "%%"),
        )


def forecast_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``forecast_<field>`` values that ``forecast_flags``'s flags were given."""
    return {
        FORECAST + name: getattr(args, FORECAST + name)
        for name in PREDICTOR_FIELDS
        if getattr(args, FORECAST + name, None) is not None
    }


def predictor_from_flags(args: argparse.Namespace) -> PredictorSettings:
    """The defaults with the flags' values, each checked like the daemon's (``replay``)."""
    changes = {
        key[len(FORECAST) :]: _forecast(key[len(FORECAST) :], value, f"--{key.replace('_', '-')}")
        for key, value in forecast_overrides(args).items()
    }
    return dataclasses.replace(DEFAULT_SETTINGS, **changes)
