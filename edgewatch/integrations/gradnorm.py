"""The gradient norm at the end of backward, before any clipping.

Frameworks clip gradients between backward and the optimizer step (the HF Trainer with
no callback in between), so an optimizer hook would see clipped gradients and report
``max_grad_norm`` whenever clipping happens. This takes the fused norm when the autograd
engine finishes a backward pass: a post-accumulate-grad hook on the parameters queues one
engine callback per pass. With gradient accumulation, the last pass before the step
holds the accumulated gradients, and its norm is the one kept.
"""

from __future__ import annotations

import torch

from edgewatch.client.capture import global_grad_norm, single_group


class PreClipGradNorm:
    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.one_group = single_group(self.params)
        self.value: torch.Tensor | None = None
        self._queued = False
        self._handles = [
            p.register_post_accumulate_grad_hook(self._on_grad)  # type: ignore[no-untyped-call]
            for p in self.params
        ]

    def _on_grad(self, _param: torch.Tensor) -> None:
        if not self._queued:  # once per backward pass, whichever parameter comes first
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._at_end_of_backward)

    def _at_end_of_backward(self) -> None:
        self._queued = False
        with torch.no_grad():
            self.value = global_grad_norm(self.params, self.one_group)

    def take(self) -> torch.Tensor | None:
        """The norm of the last backward pass, once (None if none happened since)."""
        value, self.value = self.value, None
        return value

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
