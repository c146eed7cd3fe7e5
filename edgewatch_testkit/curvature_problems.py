"""Small float64 problems with exact Hessians, for the curvature tests and
``bench/perf/curvature.py``.

Each problem is a model, a probe (zero-arg, returns the full-batch loss) and the dense
Hessian of that loss with respect to the flat parameters (``torch.func.jacrev`` twice), from
which ``numpy.linalg.eigvalsh`` gives the exact spectrum.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch.func import functional_call, jacrev


@dataclasses.dataclass
class Problem:
    name: str
    model: torch.nn.Module
    probe: Callable[[], torch.Tensor]
    loss_of: Callable[[torch.nn.Module, dict[str, torch.Tensor] | None], torch.Tensor]
    optimizer: torch.optim.Optimizer | None = None

    def dense_hessian(self) -> np.ndarray:
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        params = [p.detach() for p in self.model.parameters() if p.requires_grad]
        sizes = [p.numel() for p in params]
        flat = torch.cat([p.reshape(-1) for p in params])

        def loss(flat: torch.Tensor) -> torch.Tensor:
            chunks = torch.split(flat, sizes)
            values = {n: c.view_as(p) for n, c, p in zip(names, chunks, params, strict=True)}
            return self.loss_of(self.model, values)

        # Reverse over reverse: torch.func.hessian (forward over reverse) trips a torch-
        # internal deprecation warning, which this suite turns into an error.
        return np.asarray(jacrev(jacrev(loss))(flat).detach().numpy(), dtype=np.float64)

    def spectrum(self) -> np.ndarray:
        return np.linalg.eigvalsh(self.dense_hessian())


def _regression(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=g, dtype=torch.float64)
    w = torch.randn(8, 1, generator=g, dtype=torch.float64)
    return x, torch.sin(1.5 * x @ w)


def _classification(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    # Random labels: memorising them keeps the loss up long enough for GD to sharpen
    # (separable labels drive cross-entropy to zero, and sharpness with it, in ~50 steps).
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 8, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (96,), generator=g)


def mlp(outputs: int, seed: int = 1, width: int = 24) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(8, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, width),
        torch.nn.Tanh(),
        torch.nn.Linear(width, outputs),
    ).double()


def make_problem(kind: str, stage: str, seed: int = 1) -> Problem:
    """kind: 'mse' or 'ce'; stage: 'init', 'trained' (Adam), 'eos' (GD at the edge)."""
    x, y = _regression() if kind == "mse" else _classification()
    model = mlp(1 if kind == "mse" else 3, seed)
    criterion = torch.nn.functional.mse_loss if kind == "mse" else torch.nn.functional.cross_entropy

    def loss_of(m: torch.nn.Module, values: dict[str, torch.Tensor] | None) -> torch.Tensor:
        out = functional_call(m, values, (x,)) if values is not None else m(x)
        return criterion(out, y)

    def probe() -> torch.Tensor:
        return loss_of(model, None)

    optimizer: torch.optim.Optimizer | None = None
    if stage == "trained":
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        steps = 300
    elif stage == "eos":
        # Full-batch GD past progressive sharpening (measured): MSE at η = 0.2 sits at
        # λ ≈ 2/η = 10 with the second eigenvalue within 1%; CE at η = 0.5 reaches
        # λ ≈ 4.5 against 2/η = 4 after 100 steps.
        optimizer = torch.optim.SGD(model.parameters(), lr=0.2 if kind == "mse" else 0.5)
        steps = 800 if kind == "mse" else 100
    else:
        steps = 0
    for _ in range(steps):
        assert optimizer is not None
        optimizer.zero_grad()
        probe().backward()
        optimizer.step()
    if optimizer is not None:
        optimizer.zero_grad()
    return Problem(f"{kind}-{stage}", model, probe, loss_of, optimizer)


def trajectory(kind: str, lr: float, steps: int, every: int, seed: int = 1) -> list[Problem]:
    """Snapshots of one full-batch GD run (for warm starts across nearby steps)."""
    base = make_problem(kind, "init", seed)
    optimizer = torch.optim.SGD(base.model.parameters(), lr=lr)
    snapshots = []
    for step in range(steps):
        optimizer.zero_grad()
        base.probe().backward()
        optimizer.step()
        if step % every == 0:
            snapshots.append(base)
    return snapshots


def spectrum_with(eigenvalues: list[float], seed: int = 0, turn: float = 0.0) -> torch.Tensor:
    """A symmetric matrix with these eigenvalues; ``turn`` rotates its eigenvectors a
    little (a slowly moving Hessian: turn 1 ≈ 0.01 rad)."""
    n = len(eigenvalues)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    if turn:
        skew = torch.randn(
            n, n, generator=torch.Generator().manual_seed(seed + 1000), dtype=torch.float64
        )
        skew = (skew - skew.T) / (2 * n**0.5)
        q = torch.linalg.matrix_exp(0.01 * turn * skew) @ q
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
