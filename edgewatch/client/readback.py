"""Reading device scalars back without stalling the training thread.

The training thread collects per-step values (loss, gradient norm) as 0-d tensors and
hands them over in chunks. For CUDA tensors it stacks a chunk's values into one tensor,
starts one non-blocking copy into pinned host memory and records an event: no host-device
synchronisation happens on the training thread. The sender thread polls the event
(``query()``, never a blocking sync) and reads the host copy once it has landed. CPU
tensors need none of that: the sender reads them directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

Value = torch.Tensor | float | int | None
Row = tuple[int, float, list[Any], Value, Value, Value, Value, Value]
"""One step as the training thread keeps it: step, wall time, group LRs, loss, grad norm,
loss scale, update norm, moment ratio."""

VALUES_PER_ROW = 5  # loss, grad norm, loss scale, update norm, moment ratio: device values


@dataclasses.dataclass
class Packed:
    """A chunk's values, some of them possibly still in flight from the device."""

    values: list[Any]
    host: torch.Tensor | None = None  # pinned copy of the device values
    event: Any = None  # torch.cuda.Event recorded after the copy
    slots: list[int] = dataclasses.field(default_factory=list)  # positions of device values
    device_left: bool = False  # tensors of a non-CUDA device kind among ``values``

    def ready(self) -> bool:
        return self.event is None or bool(self.event.query())

    def floats(self) -> list[float | None]:
        """Every value as a Python float (call once ``ready()``)."""
        if self.host is None and not self.device_left:
            return self.values  # everything was read on the training thread already
        out: list[Any] = list(self.values)
        if self.host is not None:
            for slot, value in zip(self.slots, self.host.tolist(), strict=True):
                out[slot] = value
        # Tensors left here are device tensors of other (non-CUDA) kinds.
        return [
            None if v is None else (v.item() if isinstance(v, torch.Tensor) else float(v))
            for v in out
        ]


def host_value(value: Any) -> Value:
    """A float now when that costs no sync (host tensors); device tensors stay deferred.

    Raises (TypeError, ValueError, RuntimeError) for what is no scalar: a string, a
    tensor of several elements.

    On the CPU there is nothing to wait for, and reading the scalar here (~0.5 µs) is
    cheaper than keeping a detached tensor; it also leaves the sender thread no torch
    calls, each of which hands the GIL to and from the training thread.
    """
    if isinstance(value, torch.Tensor):
        # ``is_cpu`` costs 80 ns where ``device.type`` costs 420: this runs twice a step.
        if value.numel() != 1:
            raise ValueError(f"expected a scalar loss, got a tensor of shape {tuple(value.shape)}")
        return value.item() if value.is_cpu else value.detach()
    return None if value is None else float(value)


def pack(rows: list[Row]) -> Packed:
    """Start moving a chunk's CUDA values to the host; runs on the training thread.

    ``values`` of the result are the device values of each row (``VALUES_PER_ROW``), flattened.
    """
    values: list[Value] = []
    for row in rows:
        values.extend(row[3:])
    slots = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor) and v.is_cuda]
    if not slots:
        return Packed(values, device_left=any(isinstance(v, torch.Tensor) for v in values))
    device_values = torch.stack([values[i].detach().reshape(()).float() for i in slots])  # type: ignore[union-attr]
    host = torch.empty(device_values.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(device_values, non_blocking=True)
    event = torch.cuda.Event()  # type: ignore[no-untyped-call]
    event.record()
    on_device = set(slots)
    rest = [None if i in on_device else v for i, v in enumerate(values)]
    return Packed(rest, host=host, event=event, slots=slots)


def loss_scale(scaler: Any) -> Value:
    """The scaler's current scale without a sync: its scale tensor, read back later."""
    scale = getattr(scaler, "_scale", None)  # torch.amp.GradScaler keeps it on the device
    if isinstance(scale, torch.Tensor):
        return host_value(scale)
    return float(scaler.get_scale()) if hasattr(scaler, "get_scale") else None
