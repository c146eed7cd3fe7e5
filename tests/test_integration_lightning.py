"""Lightning with EdgewatchCallback: a small module on CPU, with gradient accumulation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from edgewatch.server import Daemon

lightning = pytest.importorskip("lightning", reason="pip install edgewatch[lightning]")
from edgewatch.integrations.lightning import EdgewatchCallback  # noqa: E402


class Regressor(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
        )
        self.norms_before_clip: list[float] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.norms_before_clip.append(math.sqrt(sum(float(g.pow(2).sum()) for g in grads)))

    def configure_optimizers(self) -> dict[str, object]:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def test_one_record_per_optimizer_step_with_the_pre_clip_norm(
    daemon: Daemon, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    x = torch.randn(128, 8)
    data = torch.utils.data.TensorDataset(x, (x[:, :1] * 3).sin())
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    module = Regressor()
    callback = EdgewatchCallback(job="lightning", endpoint=daemon.endpoint, budget=0.9)
    trainer = lightning.Trainer(
        max_epochs=3,
        accumulate_grad_batches=2,
        gradient_clip_val=0.05,
        accelerator="cpu",
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, loader)
    job = daemon.jobs.get("lightning")
    assert job is not None and job.status == "finished" and job.optimizer["momentum"] == 0.9
    steps = daemon.store.steps(job.pk)
    optimizer_steps = 3 * (128 // 8) // 2  # 16 micro-batches an epoch, 2 per optimizer step
    assert [s["step"] for s in steps] == list(range(optimizer_steps))
    # The norm before clipping (clipping at 0.05 would cap every one of them).
    assert [s["grad_norm"] for s in steps] == pytest.approx(module.norms_before_clip, rel=1e-5)
    assert max(s["grad_norm"] for s in steps) > 0.05
    # The LR each step used: StepLR halves it every 5 optimizer steps.
    assert [s["lr"] for s in steps[:11]] == pytest.approx([0.5] * 5 + [0.25] * 5 + [0.125])
    assert all(math.isfinite(s["loss"]) for s in steps)
    assert callback.mon is not None and callback.mon.stats["errors"] == 0
