"""edgewatch for the Hugging Face ``transformers.Trainer``, in one line::

    trainer = Trainer(model, args, train_dataset=ds,
                      callbacks=[EdgewatchCallback(job="gpt2-run3")])

What it records, per optimizer step (``on_step_end``), is the raw truth rather than the
Trainer's logs, which average the loss over logging steps and drop NaN/Inf losses:

- the loss: the model's own ``outputs.loss``, averaged over the micro-batches of this
  optimizer step only (gradient accumulation), NaN and Inf kept;
- the gradient norm *before* clipping (the Trainer clips before any callback runs, so
  the monitor's own measurement at the end of backward is the one that sees it,
  ``client/gradnorm.py``);
- the LR in force, the loss scale and skipped steps under fp16 (the accelerate scaler).

Sharpness is measured on a probe: the first batch of the training data loader, kept
fixed, in the model's training mode, within ``budget``. Only global rank 0 reports.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

import edgewatch
from edgewatch.client.options import AttachOptions


class EdgewatchCallback(TrainerCallback):
    def __init__(
        self,
        job: str,
        endpoint: str | None = None,
        *,
        budget: float = 0.02,
        probe: bool = True,
        **options: Any,
    ) -> None:
        self.job = job
        self.endpoint = endpoint
        self.budget = budget
        self.use_probe = probe
        AttachOptions.of(options)  # a bad option fails here, not when training starts
        self.options = options
        self.mon: edgewatch.Monitor | None = None
        self._losses: list[torch.Tensor] = []
        self._probing = False
        self._hook: Any = None

    # -- Trainer events -------------------------------------------------------------

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        train_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        probe, probe_batch = None, None
        if self.use_probe and train_dataloader is not None:
            probe, probe_batch = self._make_probe(model, train_dataloader)
        options: dict[str, Any] = {
            "probe_batch": probe_batch,
            "grad_scaler": getattr(optimizer, "scaler", None),
        }
        self.mon = edgewatch.attach(
            inner,
            model=model,
            job=self.job,
            endpoint=self.endpoint,
            probe=probe,
            scheduler=lr_scheduler,
            total_steps=state.max_steps or None,
            budget=self.budget,
            **(options | self.options),
        )
        self._hook = model.register_forward_hook(self._capture_loss)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.mon is None:
            return
        losses, self._losses = self._losses, []
        loss = torch.stack(losses).float().mean() if losses else None
        self.mon.step(loss, step=state.global_step - 1)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
        if self.mon is not None:
            self.mon.close()

    # -- helpers --------------------------------------------------------------------

    def _capture_loss(self, module: torch.nn.Module, inputs: Any, outputs: Any) -> None:
        # Training forwards only: not evaluation, not the sharpness probe.
        loss = getattr(outputs, "loss", None)
        if module.training and not self._probing and isinstance(loss, torch.Tensor):
            self._losses.append(loss.detach())

    def _make_probe(self, model: Any, loader: Any) -> tuple[Any, int | None]:
        batch = next(iter(loader))
        device = next(model.parameters()).device
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        size = next((len(v) for v in inputs.values() if isinstance(v, torch.Tensor)), None)

        def probe() -> torch.Tensor:
            self._probing = True
            try:
                loss: torch.Tensor = model(**inputs).loss
                return loss
            finally:
                self._probing = False

        return probe, size
