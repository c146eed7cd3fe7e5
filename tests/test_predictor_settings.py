"""The predictor's settings, defined once (PredictorSettings): the daemon's [forecast]
table, EDGEWATCH_FORECAST_* variables and --forecast-* flags, replay's flags and the
README's table all follow its fields."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from pathlib import Path

import pytest

from edgewatch.cli import build_parser
from edgewatch.errors import ConfigError
from edgewatch.monitor.settings import DEFAULT_SETTINGS, PredictorSettings, field_docs
from edgewatch.server.config import (
    PREDICTOR_FIELDS,
    Settings,
    forecast_overrides,
    load_settings,
    predictor_from_flags,
)

README = Path(__file__).parents[1] / "README.md"
BEGIN = "<!-- predictor settings: generated from PredictorSettings, checked by tests -->"
END = "<!-- end of the predictor settings -->"


def readme_table() -> str:
    """The README's table of the predictor's settings, from the fields and docstrings."""
    rows = [BEGIN, "| `[forecast]` key | flag | default | meaning |", "|---|---|---|---|"]
    docs = field_docs()
    for name in PREDICTOR_FIELDS:
        default = getattr(DEFAULT_SETTINGS, name)
        shown = "`inf` (off)" if default == math.inf else f"`{default}`"
        flag = f"--forecast-{name.replace('_', '-')}"
        meaning = docs[name].replace("``", "`").replace("|", "\\|")
        rows.append(f"| `{name}` | `{flag}` | {shown} | {meaning} |")
    return "\n".join([*rows, END])


def test_the_readme_table_is_the_fields() -> None:
    text = README.read_text()
    found = re.search(re.escape(BEGIN) + ".*?" + re.escape(END), text, re.S)
    expected = readme_table()
    assert found is not None, f"README.md lacks the predictor's table; add:\n{expected}"
    assert found.group(0) == expected, f"README.md's predictor table is stale; use:\n{expected}"


def test_every_field_has_a_docstring_and_serve_a_flag() -> None:
    assert set(field_docs()) == set(PREDICTOR_FIELDS)
    args = build_parser().parse_args(["serve", "--forecast-loss-smoothing", "0.5"])
    assert forecast_overrides(args) == {"forecast_loss_smoothing": 0.5}
    for name in PREDICTOR_FIELDS:
        flag = f"--forecast-{name.replace('_', '-')}"
        value = str(getattr(DEFAULT_SETTINGS, name))
        args = build_parser().parse_args(["serve", flag, value])
        assert forecast_overrides(args) == {f"forecast_{name}": getattr(DEFAULT_SETTINGS, name)}


def test_forecast_table_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "edgewatch.toml"
    config.write_text(
        '[edgewatch]\ndb = "sqlite:///f.db"\n\n'
        "[forecast]\nmargin = 2.0\nhorizon = 50\npersist = 3\ngrad-excursion = inf\n"
    )
    env = {"EDGEWATCH_FORECAST_HORIZON": "70", "EDGEWATCH_FORECAST_PERSIST": "4"}
    flags = {"forecast_persist": 5, "forecast_margin": None}
    s = load_settings(config, env=env, overrides=flags)
    assert s.db == "sqlite:///f.db"
    assert s.forecast.margin == 2.0  # file; the flag was not given
    assert s.forecast.horizon == 70  # environment beats file
    assert s.forecast.persist == 5  # flag beats environment
    assert s.forecast.grad_excursion == math.inf
    assert s.forecast.safety == DEFAULT_SETTINGS.safety  # untouched: the default
    assert s.predictor() is s.forecast


def test_the_older_spellings_still_work(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("forecast_margin = 1.2\n\n[forecast]\nwarm = 10\n")
    s = load_settings(config, env={"EDGEWATCH_FORECAST_LOSS_EXCURSION": "1.5"})
    assert (s.forecast.margin, s.forecast.warm, s.forecast.loss_excursion) == (1.2, 10, 1.5)
    assert s.forecast_margin == 1.2  # type: ignore[attr-defined]
    flat = Settings(forecast_margin=1.0, forecast_horizon=10)  # type: ignore[call-arg]
    assert flat.forecast == dataclasses.replace(DEFAULT_SETTINGS, margin=1.0, horizon=10)
    assert dataclasses.replace(flat, db="sqlite:///x.db").forecast == flat.forecast


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EDGEWATCH_FORECAST_MARGIN": "0"}, "EDGEWATCH_FORECAST_MARGIN: margin must be > 0"),
        ({"EDGEWATCH_FORECAST_HORIZON": "1.5"}, "horizon must be a whole number"),
        ({"EDGEWATCH_FORECAST_GRAD_EXCURSION": "0.5"}, r"grad_excursion must be >= 1 .*inf"),
        ({"EDGEWATCH_FORECAST_LOSS_SMOOTHING": "2"}, r"loss_smoothing must be in \(0, 1\]"),
        ({"EDGEWATCH_FORECAST_NOISE_BAND": "nan"}, "noise_band must be >= 0 and finite"),
        ({"EDGEWATCH_FORECAST_LOOKAHEAD": "10"}, "raise lookahead or lower horizon"),
    ],
)
def test_a_bad_value_says_how_to_fix_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


def test_bad_forecast_keys_in_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[forecast]\nmargn = 2.0\n")
    with pytest.raises(ConfigError, match="unknown \\[forecast\\] setting 'margn'"):
        load_settings(config, env={})
    config.write_text("[forecast]\nmargin = -1.0\n")
    with pytest.raises(ConfigError, match=r"c.toml \[forecast\]: margin must be > 0"):
        load_settings(config, env={})
    with pytest.raises(ConfigError, match="persist must be >= 1"):
        PredictorSettings(persist=0)


def _replay(*flags: str) -> PredictorSettings:
    args: argparse.Namespace = build_parser().parse_args(["replay", "--trace", "t", *flags])
    return predictor_from_flags(args)


def test_replay_takes_the_old_spellings_and_the_new_flags_alike() -> None:
    old = _replay("--margin", "2.5", "--horizon", "10", "--loss-excursion", "1.4")
    new = _replay("--forecast-margin", "2.5", "--forecast-horizon", "10",
                  "--forecast-loss-excursion", "1.4")  # fmt: skip
    assert (
        old
        == new
        == dataclasses.replace(DEFAULT_SETTINGS, margin=2.5, horizon=10, loss_excursion=1.4)
    )
    assert _replay("--forecast-recover-steps", "7").recover_steps == 7
    assert _replay() == DEFAULT_SETTINGS
    with pytest.raises(ConfigError, match="--forecast-margin: margin must be > 0"):
        _replay("--margin", "-1")
