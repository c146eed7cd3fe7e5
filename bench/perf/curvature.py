"""Curvature: HVPs to reach 1% error, warm vs cold Lanczos vs a PyHessian-style power
iteration (side by side, same snapshots), and the training overhead at the default budget.

Accuracy runs:
- Trajectories of full-batch training of the float64 test MLPs (841 parameters), one
  snapshot every few optimizer steps, exact λ from the dense Hessian: MSE with GD at
  η = 0.2 (initialisation, progressive sharpening, then the edge of stability, where the
  top two eigenvalues are within 1%), cross-entropy with GD at η = 0.5, MSE with Adam
  (preconditioned sharpness, exact λ of D·H·D).
- A ~0.56M-parameter MLP (float32, cross-entropy, SGD), where the reference value is a
  cold Lanczos run to residual 1e-7.

For each snapshot and method: the HVPs after which the estimate is first within 1% of the
truth (the k-th iterate is the method rerun with max_iter = k), and the error and HVPs
where the method's own stopping rule ends it. Warm Lanczos starts from the previous
snapshot's vector; cold Lanczos and power iteration from a fresh random vector.
PyHessian-style: power iteration, at most 100 HVPs, stop when the eigenvalue changes by
less than 1e-3 relative.

Overhead run: a small character-level transformer on CPU trained with and without
edgewatch (probe, default budget 0.02), whole runs alternated, wall time compared.

Usage: python -m bench.perf.curvature [--quick]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import edgewatch
from bench.common import daemon_process, header
from bench.perf.curvature_tracker import tracker_section
from edgewatch.monitor import NotConvergedWarning, adam_preconditioner, top_eigenvalue
from edgewatch.monitor.eigen import COLD_EXPLORE
from edgewatch.monitor.hvp import HessianOperator, flat_params
from edgewatch_testkit.curvature_problems import make_problem

TARGET = 0.01
MAX_K = 40


def iterates_to_target(run: Callable[[int], float], truth: float, max_k: int = MAX_K) -> float:
    """Smallest k whose k-th iterate is within TARGET of the truth (inf if none)."""
    for k in range(1, max_k + 1):
        if abs(run(k) - truth) <= TARGET * abs(truth):
            return k
    return math.inf


def pyhessian_power(op: HessianOperator, v: torch.Tensor, truth: float) -> tuple[float, float, int]:
    """(HVPs to 1%, final relative error, HVPs used) of PyHessian's stopping rule."""
    v = v / v.norm()
    previous, first_hit = None, math.inf
    for k in range(1, 101):
        w = op(v)
        value = float(torch.dot(v, w))
        if first_hit == math.inf and abs(value - truth) <= TARGET * abs(truth):
            first_hit = k
        if previous is not None and abs(value - previous) / (abs(previous) + 1e-6) < 1e-3:
            break
        previous = value
        v = w / w.norm()
    return first_hit, abs(value - truth) / abs(truth), k


class Comparison:
    """Runs the three methods on each snapshot as it is taken (an operator holds the
    autograd graph of its step, which the optimizer's in-place update then invalidates)."""

    def __init__(self, seed: int) -> None:
        self.results: dict[str, dict[str, list[float]]] = {
            m: {"to1pct": [], "final_err": [], "hvps": []} for m in ("warm", "cold", "pyhessian")
        }
        self.warm_vector: torch.Tensor | None = None
        self.generator = torch.Generator().manual_seed(seed)

    def add(self, op: HessianOperator, truth: float) -> None:
        dtype = op.params[0].dtype
        cold_v0 = torch.randn(op.dim, generator=self.generator, dtype=torch.float64).to(dtype)
        warm_v0 = self.warm_vector if self.warm_vector is not None else cold_v0
        for method, v0 in (("warm", warm_v0), ("cold", cold_v0)):

            def kth(k: int, v0: torch.Tensor = v0) -> float:
                return top_eigenvalue(op, v0, tol=1e-14, max_iter=k).value

            r = self.results[method]
            r["to1pct"].append(iterates_to_target(kth, truth))
            cold = method == "cold" or self.warm_vector is None
            final = top_eigenvalue(
                op, v0, tol=1e-3, max_iter=30, min_iter=COLD_EXPLORE if cold else 1
            )
            r["final_err"].append(abs(final.value - truth) / abs(truth))
            r["hvps"].append(final.matvecs)
            if method == "warm":
                self.warm_vector = final.vector
        hit, err, used = pyhessian_power(op, cold_v0.clone(), truth)
        r = self.results["pyhessian"]
        r["to1pct"].append(hit)
        r["final_err"].append(err)
        r["hvps"].append(used)


def small_trajectory(
    kind: str, optimizer_name: str, lr: float, steps: int, every: int
) -> Comparison:
    problem = make_problem(kind, "init")
    params = list(problem.model.parameters())
    opt: torch.optim.Optimizer = (
        torch.optim.SGD(params, lr=lr)
        if optimizer_name == "gd"
        else torch.optim.Adam(params, lr=lr)
    )
    comparison = Comparison(seed=1)
    for step in range(steps):
        opt.zero_grad()
        problem.probe().backward()
        opt.step()
        if step % every == 0:
            opt.zero_grad()
            dense = problem.dense_hessian()
            scale = adam_preconditioner(opt, params) if optimizer_name == "adam" else None
            if scale is not None:
                d = scale.numpy()
                dense = d[:, None] * dense * d[None, :]
            truth = float(np.linalg.eigvalsh(dense)[-1])
            comparison.add(HessianOperator(params, problem.probe, scale), truth)
    return comparison


def large_trajectory(snapshots: int, every: int) -> tuple[Comparison, int]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 512),
        torch.nn.Tanh(),
        torch.nn.Linear(512, 512),
        torch.nn.Tanh(),
        torch.nn.Linear(512, 512),
        torch.nn.Tanh(),
        torch.nn.Linear(512, 10),
    )
    x, y = torch.randn(256, 64), torch.randint(0, 10, (256,))

    def probe() -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(x), y)

    params = flat_params(model)
    opt = torch.optim.SGD(params, lr=0.05)
    comparison = Comparison(seed=2)
    for step in range(snapshots * every):
        opt.zero_grad()
        probe().backward()
        opt.step()
        if step % every == 0:
            op = HessianOperator(params, probe)
            reference = top_eigenvalue(
                op, op.dim, tol=1e-7, max_iter=150, generator=torch.Generator().manual_seed(step)
            )
            comparison.add(op, reference.value)
    return comparison, sum(p.numel() for p in params)


def summarize(name: str, results: dict[str, dict[str, list[float]]]) -> list[str]:
    rows = []
    labels = {
        "warm": "Lanczos, warm",
        "cold": "Lanczos, cold",
        "pyhessian": "power, PyHessian rule",
    }
    for method, r in results.items():
        # The first snapshot has no previous vector: a warm start begins at the second.
        first = 1 if method == "warm" else 0
        hits = np.array(r["to1pct"][first:], dtype=float)
        never = int(np.sum(~np.isfinite(hits)))
        capped = np.where(np.isfinite(hits), hits, 10 * MAX_K)  # "never" sorts last
        med, p90 = np.median(capped), np.percentile(capped, 90)
        meds = f"{med:.0f}" if med <= MAX_K else "never"
        p90s = f"{p90:.0f}" if p90 <= MAX_K else "never"
        mx = f"{hits.max():.0f}" if never == 0 else f"never ({never} of {hits.size})"
        err = np.array(r["final_err"][first:])
        rows.append(
            f"| {name} | {labels[method]} | {meds} | {p90s} | {mx} | "
            f"{np.median(err):.1e} | {err.max():.1e} | {np.median(r['hvps'][first:]):.0f} |"
        )
    return rows


class TinyTransformer(torch.nn.Module):
    def __init__(self, vocab: int = 64, d: int = 64, layers: int = 2, context: int = 64) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.position = torch.nn.Parameter(torch.zeros(context, d))
        layer = torch.nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True)
        self.blocks = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(d, vocab)
        self.mask = torch.nn.Transformer.generate_square_subsequent_mask(context)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        return self.head(self.blocks(h, mask=self.mask, is_causal=True))  # (B, T, vocab)


class OwnClock:
    """Time that passes only while the monitored loop runs (for the budget's share)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.since: float | None = None

    def run(self) -> None:
        self.since = time.monotonic()

    def pause(self) -> None:
        assert self.since is not None
        self.total += time.monotonic() - self.since
        self.since = None

    def __call__(self) -> float:
        return self.total + (time.monotonic() - self.since if self.since is not None else 0.0)


class TrainingLoop:
    """The tiny transformer's training, run block by block."""

    def __init__(self, endpoint: str | None) -> None:
        torch.manual_seed(0)
        self.model = TinyTransformer()
        self.data = torch.randint(0, 64, (512, 65))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.step_count, self.seconds = 0, 0.0
        self.clock = OwnClock()
        self.mon = None
        if endpoint is not None:
            probe_batch = self.data[:8]
            self.mon = edgewatch.attach(
                self.opt,
                model=self.model,
                job=f"overhead-{time.time_ns()}",
                endpoint=endpoint,
                probe=lambda: self.loss_on(probe_batch),
            )
            assert self.mon.curvature is not None
            self.mon.curvature.use_clock(self.clock)

    def loss_on(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.model(batch[:, :-1])  # (B, T, vocab)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 64), batch[:, 1:].reshape(-1))

    def block(self, steps: int) -> None:
        self.clock.run()
        start = time.perf_counter()
        for _ in range(steps):
            i = (self.step_count * 16) % 512
            self.step_count += 1
            loss = self.loss_on(self.data[i : i + 16])
            loss.backward()
            self.opt.step()
            if self.mon is not None:
                self.mon.step(loss)
            self.opt.zero_grad()
        self.seconds += time.perf_counter() - start
        self.clock.pause()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer snapshots and steps")
    parser.add_argument("--only", choices=["accuracy", "tracker", "overhead"], help="run one part")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", NotConvergedWarning)
    q = args.quick
    print(
        header(
            "Curvature: HVPs to 1% error, and training overhead",
            "make bench-curvature  (python -m bench.perf.curvature"
            + (" --quick" if q else "")
            + (f" --only {args.only}" if args.only else "")
            + ")",
        )
    )
    if args.only in (None, "accuracy"):
        accuracy(q)
    if args.only in (None, "tracker"):
        tracker_section(q)
    if args.only in (None, "overhead"):
        overhead(q)


def accuracy(q: bool) -> None:
    print(
        "| problem | method | HVPs to 1%: median | p90 | max | error at stop: median | max | "
        "HVPs at stop: median |"
    )
    print("|---|---|---|---|---|---|---|---|")
    families = [
        ("MLP-841 MSE, GD η=0.2 (to the edge)", "mse", "gd", 0.2, 300, 6),
        ("MLP-841 CE, GD η=0.5", "ce", "gd", 0.5, 200, 5),
        ("MLP-841 MSE, Adam (preconditioned)", "mse", "adam", 3e-3, 200, 5),
    ]
    for name, kind, opt, lr, steps, every in families:
        if q:
            steps //= 3
        results = small_trajectory(kind, opt, lr, steps, every).results
        print(
            "\n".join(summarize(f"{name}, {len(results['warm']['to1pct'])} snapshots", results)),
            flush=True,
        )
    large, n_params = large_trajectory(4 if q else 10, 2)
    count = len(large.results["warm"]["to1pct"])
    print(
        "\n".join(
            summarize(f"MLP-{n_params / 1e6:.2f}M CE, SGD, {count} snapshots", large.results)
        ),
        flush=True,
    )


def overhead(q: bool) -> None:
    blocks = 20 if q else 300
    with (
        tempfile.TemporaryDirectory() as tmp,
        daemon_process(f"sqlite:///{Path(tmp) / 'c.db'}") as (endpoint, _),
    ):
        bare, monitored = TrainingLoop(None), TrainingLoop(endpoint)
        for _ in range(blocks):  # alternated blocks: both loops see the same machine drift
            bare.block(20)
            monitored.block(20)
        assert monitored.mon is not None and monitored.mon.curvature is not None
        schedule = monitored.mon.curvature
        monitored.mon.close()
    steps = 20 * blocks
    print(
        f"\nOverhead at the default budget (0.02), tiny transformer (2 layers, d=64, context 64, "
        f"batch 16, AdamW, {sum(p.numel() for p in bare.model.parameters()):,} parameters): "
        f"{steps} steps each, in alternated blocks of 20. Unmonitored {bare.seconds:.1f} s, "
        f"monitored {monitored.seconds:.1f} s: overhead {100 * (monitored.seconds / bare.seconds - 1):+.1f}%. "  # noqa: E501
        f"{schedule.estimates} sharpness estimates ({schedule.spent:.2f} s, "
        f"{100 * schedule.spent / monitored.seconds:.1f}% of the monitored time)."
    )


if __name__ == "__main__":
    main()
