"""The Hugging Face Trainer with EdgewatchCallback: a tiny GPT-2 built from a config, on CPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from edgewatch.server import Daemon

transformers = pytest.importorskip("transformers", reason="pip install edgewatch[hf]")
from edgewatch.integrations.hf import EdgewatchCallback  # noqa: E402


def tiny_trainer(tmp_path: Path, callback: EdgewatchCallback, steps: int) -> transformers.Trainer:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        vocab_size=64,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config)
    data = torch.randint(0, 64, (64, 32))
    dataset = [{"input_ids": row, "labels": row} for row in data]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=3e-2,
        max_grad_norm=0.5,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return transformers.Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback])


def test_one_record_per_optimizer_step_with_the_pre_clip_norm_and_raw_loss(
    daemon: Daemon, tmp_path: Path
) -> None:
    callback = EdgewatchCallback(job="hf-gpt2", endpoint=daemon.endpoint, budget=0.9)
    trainer = tiny_trainer(tmp_path, callback, steps=60)
    trainer.train()
    job = daemon.jobs.get("hf-gpt2")
    assert job is not None and job.status == "finished"
    assert job.optimizer["kind"] == "AdamW" and job.total_steps == 60
    steps = daemon.store.steps(job.pk)
    assert [s["step"] for s in steps] == list(range(60))  # optimizer steps, not micro-batches
    logged = {h["step"]: h for h in trainer.state.log_history if "grad_norm" in h}
    for s in steps:
        log = logged[s["step"] + 1]  # the Trainer counts steps from 1
        # The Trainer's own pre-clip norm, and not the clipped one (max_grad_norm = 0.5).
        assert s["grad_norm"] == pytest.approx(log["grad_norm"], rel=1e-4)
        assert s["lr"] == pytest.approx(log["learning_rate"])
        assert math.isfinite(s["loss"]) and s["loss"] > 0
    assert max(s["grad_norm"] for s in steps) > 0.5
    assert callback.mon is not None and callback.mon.stats["errors"] == 0
    assert callback.mon.curvature is not None and callback.mon.curvature.estimates >= 1
    assert job.sharpness is not None and job.preconditioned  # AdamW: λ_max(P⁻¹H)
