"""attach()'s keyword options: one frozen dataclass, every field documented and checked."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from typing import Any

import pytest
import torch

import edgewatch
from edgewatch.client.options import AttachOptions, OptionKeywords


def test_the_keywords_are_the_fields_and_every_field_says_what_it_is() -> None:
    fields = [field.name for field in dataclasses.fields(AttachOptions)]
    assert list(OptionKeywords.__annotations__) == fields
    # A field's docstring is the string right after it in the class body.
    body = ast.parse(inspect.getsource(AttachOptions)).body[0]
    assert isinstance(body, ast.ClassDef)
    documented = [
        node.target.id
        for node, after in zip(body.body, body.body[1:], strict=False)
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
        and isinstance(after.value.value, str)
    ]
    assert documented == fields


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_buffered": 0}, r"max_buffered must be a whole number >= 1"),
        ({"max_buffered": 1.5}, r"max_buffered must be a whole number"),
        ({"flush_interval": 0}, r"flush_interval must be a finite number of seconds > 0"),
        ({"close_timeout": -1}, r"close_timeout must be a finite number of seconds >= 0"),
        ({"probe_batch": 0}, r"probe_batch must be a whole number >= 1"),
        ({"all_ranks": "yes"}, r"all_ranks must be True or False"),
        ({"server_key": "a.key"}, r"CURVE needs both server_key"),
        ({"spool_max_bytes": -1}, r"spool_max_bytes must be a whole number >= 0"),
        ({"preflight": {"x": 1}}, r"preflight must be the report edgewatch.preflight"),
        ({"flush_intervall": 0.1}, r"unknown option\(s\) flush_intervall; the options are"),
    ],
)
def test_a_bad_option_is_refused_before_anything_starts(
    options: dict[str, Any], message: str
) -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises((TypeError, ValueError), match=message):
        edgewatch.attach(optimizer, model=model, job="bad-option", **options)


def test_options_are_frozen_and_their_defaults_are_the_documented_ones() -> None:
    options = AttachOptions()
    assert (options.max_buffered, options.flush_interval, options.close_timeout) == (
        200_000,
        0.2,
        5.0,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_buffered = 1  # type: ignore[misc]
