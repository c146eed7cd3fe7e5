"""edgewatch for Lightning, in one line::

    trainer = lightning.Trainer(..., callbacks=[EdgewatchCallback(job="run-7")])

Per optimizer step it records the raw loss (the ``loss`` each ``training_step`` returned,
averaged over this step's micro-batches only; NaN and Inf kept), the gradient norm
*before* clipping (``on_before_optimizer_step`` runs once the gradients are accumulated
and before Lightning clips them), the LR in force, and under 16-bit AMP the loss scale
and the skipped steps.

Sharpness is measured on a probe: by default ``training_step`` on the first training
batch, kept fixed. A ``training_step`` that calls ``self.log`` would log from the probe
too; pass ``probe=`` (a zero-argument function returning the loss) in that case. Only
global rank 0 reports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning
import torch

import edgewatch
from edgewatch.client.capture import global_grad_norm, single_group
from edgewatch.client.options import AttachOptions


def _loss_of(output: Any) -> torch.Tensor | None:
    loss = output.get("loss") if isinstance(output, dict) else output
    return loss if isinstance(loss, torch.Tensor) else None


class EdgewatchCallback(lightning.Callback):
    def __init__(
        self,
        job: str,
        endpoint: str | None = None,
        *,
        budget: float = 0.02,
        probe: Callable[[], torch.Tensor] | bool = True,
        **options: Any,
    ) -> None:
        self.job = job
        self.endpoint = endpoint
        self.budget = budget
        self.probe_option = probe
        AttachOptions.of(options)  # a bad option fails here, not when training starts
        self.options = options
        self.mon: edgewatch.Monitor | None = None
        self._losses: list[torch.Tensor] = []
        self._norm: torch.Tensor | None = None
        self._stepped = False

    def on_train_start(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        optimizer = trainer.optimizers[0]
        configs = trainer.lr_scheduler_configs
        scheduler = configs[0].scheduler if configs else None
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self._one_group = single_group(self._params)
        probe, probe_batch = self._make_probe(trainer, pl_module)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        options: dict[str, Any] = {"probe_batch": probe_batch, "grad_scaler": scaler}
        options |= self.options
        self.mon = edgewatch.attach(
            optimizer,
            model=pl_module,
            job=self.job,
            endpoint=self.endpoint,
            probe=probe,
            scheduler=scheduler,
            total_steps=max_steps,
            budget=self.budget,
            hook_grad_norm=False,
            **options,
        )

    def on_before_optimizer_step(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, optimizer: Any
    ) -> None:
        with torch.no_grad():  # accumulated, not yet clipped
            self._norm = global_grad_norm(self._params, self._one_group)
        self._stepped = True

    def on_train_batch_end(
        self,
        trainer: lightning.Trainer,
        pl_module: lightning.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = _loss_of(outputs)
        if loss is not None:
            self._losses.append(loss.detach())
        if not self._stepped or self.mon is None:
            return  # a micro-batch inside gradient accumulation
        losses, self._losses = self._losses, []
        mean = torch.stack(losses).float().mean() if losses else None
        self.mon.step(mean, step=trainer.global_step - 1, grad_norm=self._norm)
        self._stepped, self._norm = False, None

    def on_train_end(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        if self.mon is not None:
            self.mon.close()

    def _make_probe(
        self, trainer: lightning.Trainer, module: lightning.LightningModule
    ) -> tuple[Any, int | None]:
        if callable(self.probe_option):
            return self.probe_option, None
        if not self.probe_option:
            return None, None
        loader = trainer.train_dataloader
        if loader is None:
            return None, None
        batch = next(iter(loader))
        batch = module.transfer_batch_to_device(batch, module.device, 0)
        first = batch[0] if isinstance(batch, list | tuple) else batch
        size = len(first) if isinstance(first, torch.Tensor) else None

        def probe() -> torch.Tensor:
            loss = _loss_of(module.training_step(batch, 0))
            if loss is None:
                raise TypeError("training_step returned no loss: pass probe= to EdgewatchCallback")
            return loss

        return probe, size
