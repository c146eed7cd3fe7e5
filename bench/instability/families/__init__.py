"""The families of real training runs for the instability benchmark (bench/RESULTS.md).

Each family is a module exposing ``NAME``, ``grid(seeds) -> list[RunSpec]`` and
``build(spec) -> Setup``; its docstring says what it is for and what its grid produced
in the last calibration (``bench/instability/calibrate.py``). The expensive families (char_gpt,
char_rnn) use the first seed only. With seeds 0 and 1 (2026-11-29): 101 runs, 59 of
them event-free (58%), 36 MAJOR and 25 DIVERGENCE events, 603 s on 2 cores; the fast
families (2026-12-03, budget 0.02): 46 runs more, 18 event-free, 37 MAJOR and 15
DIVERGENCE events, 105 s.

- digits_mlp: the v1 zoo's tanh MLP, GD / Adam / minibatch SGD, EoS and LR plans;
- char_gpt: a character-level GPT with AdamW, clipping on and off, up to Adam's spikes;
- digits_cnn: a BatchNorm CNN with heavy-ball and Nesterov SGD;
- char_rnn: a GRU language model with Adam;
- minibatch_safe: minibatch runs at LRs a practitioner would pick (all healthy);
- fast_cnn, fast_mlp, fast_gru: users' short runs (400-500 steps of about 1-3 ms): a
  tiny CNN with heavy-ball SGD, a ReLU MLP with AdamW under warmup + cosine, a small
  GRU with Adam; each with healthy plans, scheduled ×10-×30 LR jumps, and plans too
  hot from the start.

A ``RunSpec`` names one run (its family's own hyper-parameters in ``params``); a
``Setup`` is everything the harness (``bench/instability/harness.py``) needs to train it: the model
and optimizer, the LR plan, the batch of each step, the loss, a fixed small probe batch
for edgewatch's sharpness and the loss the labels come from.

Rules every family keeps, so that one training run serves every monitor and a rerun is
the same run:
- ``batch(step)`` is a pure function of the step (its own seeded generator), and no
  model draws random numbers while training (dropout 0): edgewatch's Lanczos start
  vectors may use the global RNG without changing the run.
- ``label_loss()`` is a loss on a FIXED batch, under ``no_grad``, with the model left
  in train mode (families with BatchNorm restore its running statistics afterwards).
- Data come from what ships with Python and scikit-learn; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import torch

Param = str | int | float | bool | None


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a family. ``params``: the family's own hyper-parameters, as sorted
    (key, value) pairs so that the spec stays hashable and JSON-serialisable."""

    family: str
    name: str
    seed: int
    steps: int
    params: tuple[tuple[str, Param], ...] = ()

    @property
    def job(self) -> str:
        return f"{self.name}/seed{self.seed}"

    def get(self, key: str, default: Param = None) -> Any:
        return dict(self.params).get(key, default)

    @classmethod
    def make(cls, family: str, name: str, seed: int, steps: int, **params: Param) -> RunSpec:
        return cls(family, name, seed, steps, tuple(sorted(params.items())))

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> RunSpec:
        """The inverse of ``dataclasses.asdict`` after a JSON round trip."""
        params = tuple((str(k), v) for k, v in saved.get("params", ()))
        return cls(saved["family"], saved["name"], saved["seed"], saved["steps"], params)


@dataclasses.dataclass
class Setup:
    """A built run, ready for the training loop of ``bench/instability/harness.py``."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    planned_lr: Callable[[int], float]  # the schedule: the LR in force at each step
    batch: Callable[[int], Any]  # the training batch of a step (seeded, deterministic)
    loss: Callable[[Any], torch.Tensor]  # the training loss of a batch
    probe: Callable[[], torch.Tensor]  # a fixed small batch's loss, for sharpness
    label_loss: Callable[[], float]  # the loss the labels are computed from (no_grad)
    clip: float | None = None  # gradient clipping (max norm) in the loop, if any
    probe_batch: int | None = None  # the probe's batch size, reported with estimates


def specs(seeds: Iterable[int], families: Iterable[str] | None = None) -> list[RunSpec]:
    """Every run of the given families (all by default), for each seed."""
    chosen = list(FAMILIES) if families is None else list(families)
    unknown = [f for f in chosen if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {sorted(FAMILIES)}")
    seeds = list(seeds)
    return [spec for name in chosen for spec in FAMILIES[name].grid(seeds)]


def build(spec: RunSpec) -> Setup:
    setup: Setup = FAMILIES[spec.family].build(spec)
    return setup


# The families themselves, imported last: they import RunSpec and Setup from here.
from . import (  # noqa: E402
    char_gpt,
    char_rnn,
    digits_cnn,
    digits_mlp,
    fast_cnn,
    fast_gru,
    fast_mlp,
    minibatch_safe,
)

FAMILIES: dict[str, ModuleType] = {
    module.NAME: module
    for module in (
        digits_mlp,
        char_gpt,
        digits_cnn,
        char_rnn,
        minibatch_safe,
        fast_cnn,
        fast_mlp,
        fast_gru,
    )
}
