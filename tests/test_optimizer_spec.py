"""OptimizerSpec: the optimizer read once, the same description on the wire and in the math."""

from __future__ import annotations

import msgspec
import pytest
import torch

from edgewatch.client.capture import describe_optimizer
from edgewatch.monitor import OptimizerSpec, stability_threshold, threshold_for
from edgewatch.schemas import OptimizerInfo


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.SGD(p, lr=0.05),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
        lambda p: torch.optim.AdamW(p, lr=1e-3, betas=(0.8, 0.99)),
        lambda p: torch.optim.Adam(p, lr=torch.tensor(1e-3), capturable=True),
    ],
)
def test_the_spec_is_the_wire_record_and_gives_the_threshold(make: object) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = make(list(model.parameters()))  # type: ignore[operator]
    spec = OptimizerSpec.of(optimizer)
    assert spec.params == 8 and spec.kind == type(optimizer).__name__
    info = describe_optimizer(spec)
    assert isinstance(info, OptimizerInfo)
    # What the daemon stores (the record as a dict) gives the threshold the spec gives.
    stored = msgspec.to_builtins(info)
    assert threshold_for(stored) == pytest.approx(spec.threshold())
    assert stability_threshold(optimizer) == pytest.approx(spec.threshold())
    with pytest.raises(AttributeError):  # frozen
        spec.lr = 1.0  # type: ignore[misc]
