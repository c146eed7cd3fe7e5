"""The client's cost per training step, next to the same loop without edgewatch.

Three loops run in one process, in alternating blocks of ``--block`` steps, against
``edgewatch serve`` in its own process (SQLite):

- bare: forward, backward, optimizer step, zero_grad;
- bare + norm: the same plus the fused gradient-norm kernel edgewatch launches
  (``vector_norm(stack(_foreach_norm(grads)))``), so that the kernel's own cost is
  separated from the rest;
- edgewatch: the same loop with ``edgewatch.attach(...)`` and ``mon.step(loss)``.

Reported: the median block's µs per step of each, the kernel's cost (norm − bare) and what
edgewatch adds beyond it (edgewatch − norm; target ≤ 5 µs on 2 cores).

Usage: python -m bench.perf.client_overhead [--block 200] [--blocks 60]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import edgewatch
from bench.common import daemon_process, header


def make_model(width: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 1),
    )
    return model, torch.randn(16, 32), torch.randn(16, 1)


class Variant:
    """One training loop, set up once and run block after block."""

    def __init__(self, name: str, endpoint: str, width: int) -> None:
        self.name = name
        self.model, self.x, self.y = make_model(width)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.params = list(self.model.parameters())
        self.mon = None
        if name == "edgewatch":
            self.mon = edgewatch.attach(
                self.optimizer, model=self.model, job="overhead", endpoint=endpoint
            )
        self.block_seconds: list[float] = []

    def norm(self) -> torch.Tensor:
        grads = [p.grad for p in self.params if p.grad is not None]
        return torch.linalg.vector_norm(
            torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32))
        )

    def block(self, steps: int) -> None:
        model, optimizer, mon, x, y = self.model, self.optimizer, self.mon, self.x, self.y
        with_norm = self.name == "bare + norm"
        loss_fn = torch.nn.functional.mse_loss
        start = time.perf_counter()
        for _ in range(steps):
            loss = loss_fn(model(x), y)
            loss.backward()
            if with_norm:
                self.norm()
            optimizer.step()
            if mon is not None:
                mon.step(loss)
            optimizer.zero_grad()
        self.block_seconds.append((time.perf_counter() - start) / steps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--block", type=int, default=200, help="steps per block")
    parser.add_argument("--blocks", type=int, default=60, help="blocks per variant")
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core trains, the other is the daemon's
    names = ["bare", "bare + norm", "edgewatch"]
    with (
        tempfile.TemporaryDirectory() as tmp,
        daemon_process(f"sqlite:///{Path(tmp) / 'bench.db'}") as (endpoint, _),
    ):
        variants = [Variant(name, endpoint, args.width) for name in names]
        for v in variants:  # warm-up
            v.block(args.block)
            v.block_seconds.clear()
        # Short blocks, alternated: this VM's speed drifts by tens of percent over
        # seconds, and fine interleaving makes every variant see the same drift.
        for _ in range(args.blocks):
            for v in variants:
                v.block(args.block)
        mon = variants[-1].mon
        assert mon is not None
        mon.close()
        assert mon.stats["errors"] == 0 and mon.stats["unacknowledged"] == 0, mon.stats
    times = {v.name: v.block_seconds for v in variants}
    med = {name: statistics.median(t) * 1e6 for name, t in times.items()}
    params = sum(p.numel() for p in make_model(args.width)[0].parameters())
    print(
        header(
            "Client cost per step (CPU)",
            f"make bench-client  (python -m bench.perf.client_overhead --block {args.block} "
            f"--blocks {args.blocks} --width {args.width})",
        )
    )
    print(
        f"MLP with {params:,} parameters (6 tensors), SGD with momentum, batch 16, "
        "torch.set_num_threads(1); blocks of the three loops alternated.\n"
    )
    print("| loop | µs per step (median block) | quartiles |")
    print("|---|---|---|")
    for name, t in times.items():
        q1, _, q3 = statistics.quantiles(t, n=4)
        print(f"| {name} | {med[name]:.1f} | {q1 * 1e6:.1f}–{q3 * 1e6:.1f} |")
    kernel = med["bare + norm"] - med["bare"]
    added = med["edgewatch"] - med["bare + norm"]
    print(
        f"\ngradient-norm kernel: {kernel:.1f} µs; edgewatch beyond the kernel: {added:.1f} µs "
        f"per step; edgewatch / bare = {med['edgewatch'] / med['bare']:.3f}"
    )


if __name__ == "__main__":
    main()
