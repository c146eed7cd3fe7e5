"""The gradient norm at the end of backward, before anything changes the gradients.

A loop may clip (``clip_grad_norm_``), unscale (AMP) or otherwise rewrite the gradients
between ``backward()`` and ``optimizer.step()``; an optimizer hook sees them after that,
so it would store the clipped norm (``max_norm`` whenever clipping bites). The norm the
user wants, and the one the science talks about, is the norm of the gradient backward
produced. So it is taken when the autograd engine finishes a backward pass: a
post-accumulate-grad hook on each parameter queues one engine callback per pass, and the
callback launches one fused norm kernel (``capture.global_grad_norm``), left on the
device, read back later in batches. Nothing here synchronises with a GPU.

- **Gradient accumulation.** The pass before the optimizer step holds the accumulated
  gradients, and its norm is the step's. To launch one kernel per optimizer step rather
  than one per micro-batch, the norm is taken only from the pass whose number (counted
  since the last step) reaches the number of passes the previous step had; the first
  step, and any step with more passes than its predecessor, take every pass from there
  on. A step that comes after *fewer* passes than expected has no norm of its last pass,
  and records none rather than a clipped one.
- **DDP.** DistributedDataParallel writes the averaged gradients back into ``.grad`` in
  an engine callback queued during backward. Ours runs in the same queue, so the first
  callback queues the measurement once more, which puts it behind DDP's.
- **AMP.** Under a ``GradScaler`` the gradients of backward are multiplied by the loss
  scale; the norm is divided by the scale in force (a device tensor: no sync).
- **No backward at all** (a loop that sets ``.grad`` by hand): the optimizer hook takes
  the norm itself, as there is nothing else to take it from (``Monitor``).
"""

from __future__ import annotations

from typing import Any

import torch

from edgewatch.client.capture import global_grad_norm, single_group

_ENGINE = torch.autograd.Variable._execution_engine


class BackwardGradNorm:
    """Measures ‖g‖ at the end of each backward pass that may precede an optimizer step."""

    def __init__(self, params: list[torch.Tensor], grad_scaler: Any = None) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.one_group = single_group(self.params)
        self.grad_scaler = grad_scaler
        self.passes = 0  # backward passes since the last optimizer step
        self.expected = 1  # passes the last optimizer step had
        self.value: torch.Tensor | None = None
        self.measured_pass = 0  # the pass ``value`` is from (0: none since the last step)
        self._in_pass = False
        self._handles = [
            p.register_post_accumulate_grad_hook(self._on_grad)  # type: ignore[no-untyped-call]
            for p in self.params
        ]

    def _on_grad(self, _param: torch.Tensor) -> None:
        if self._in_pass:  # once per pass, at whichever parameter comes first
            return
        self._in_pass = True
        self.passes += 1
        _ENGINE.queue_callback(self._end_of_pass)

    def _end_of_pass(self) -> None:
        self._in_pass = False
        if self.passes >= self.expected:
            # Queued again so that it runs after the callbacks queued during this pass
            # (DDP's, which writes the averaged gradients back).
            _ENGINE.queue_callback(self._measure)

    def _measure(self) -> None:
        with torch.no_grad():
            norm = global_grad_norm(self.params, self.one_group)
            scale = getattr(self.grad_scaler, "_scale", None)
            if norm is not None and isinstance(scale, torch.Tensor):
                norm = norm / scale.to(norm.device, non_blocking=True)
        self.value, self.measured_pass = norm, self.passes

    def take(self) -> tuple[bool, torch.Tensor | None]:
        """At the optimizer step: (whether any backward ran since the last step, the norm
        of its last pass or None). Learns the number of passes per step."""
        ran = self.passes > 0
        value = self.value if ran and self.measured_pass == self.passes else None
        if ran:
            self.expected = self.passes
        self.passes, self.value, self.measured_pass = 0, None, 0
        return ran, value

    def discard(self) -> None:
        """No optimizer step followed (an AMP skip): forget the passes, learn nothing."""
        self.passes, self.value, self.measured_pass = 0, None, 0

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
