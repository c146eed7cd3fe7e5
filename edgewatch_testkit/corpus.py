"""The one character corpus of the tests and the benchmarks (the language-model families
of ``bench/instability/families/``, the nanoGPT-sized runs of ``bench/perf/``): the
first CHARS characters of a fixed list of Python standard-library sources (they ship
with every Python, so nothing is downloaded). The text varies between Python versions,
so ``corpus_hash()`` is printed with every calibration; runs are comparable only under
the same hash.

Vocabulary: printable ASCII and newline (96 symbols), anything else one extra symbol.
The last HELD_OUT characters are held out: the label loss is measured there.
"""

from __future__ import annotations

import functools
import hashlib
import sysconfig
from pathlib import Path

import torch

FILES = (
    "textwrap.py",
    "difflib.py",
    "argparse.py",
    "functools.py",
    "random.py",
    "statistics.py",
    "heapq.py",
    "pprint.py",
    "calendar.py",
    "fractions.py",
)
CHARS = 300_000
HELD_OUT = 30_000
SYMBOLS = "\n" + "".join(chr(c) for c in range(32, 127))
VOCAB = len(SYMBOLS) + 1  # the last index: any other character


@functools.cache
def corpus() -> str:
    folder = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for name in FILES:
        parts.append((folder / name).read_text(encoding="utf-8"))
        if sum(map(len, parts)) >= CHARS:
            break
    return "".join(parts)[:CHARS]


def corpus_hash() -> str:
    return hashlib.sha256(corpus().encode("utf-8")).hexdigest()[:16]


@functools.cache
def encoded() -> torch.Tensor:
    index = {c: i for i, c in enumerate(SYMBOLS)}
    unknown = len(SYMBOLS)
    return torch.tensor([index.get(c, unknown) for c in corpus()], dtype=torch.long)


def train_tokens() -> torch.Tensor:
    return encoded()[:-HELD_OUT]


def held_out_tokens() -> torch.Tensor:
    return encoded()[-HELD_OUT:]


def windows(tokens: torch.Tensor, starts: torch.Tensor, context: int) -> torch.Tensor:
    """Rows tokens[s : s + context + 1] for each start s (inputs and shifted targets)."""
    offsets = torch.arange(context + 1)
    return tokens[starts[:, None] + offsets[None, :]]


def batch_sampler(seed: int, batch: int, context: int) -> functools.partial[torch.Tensor]:
    """batch(step): ``batch`` random training windows, a pure function of (seed, step)."""
    return functools.partial(_batch_at, seed, batch, context)


def _batch_at(seed: int, batch: int, context: int, step: int) -> torch.Tensor:
    tokens = train_tokens()
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(tokens) - context - 1, (batch,), generator=generator)
    return windows(tokens, starts, context)


def fixed_windows(tokens: torch.Tensor, count: int, context: int) -> torch.Tensor:
    """``count`` windows spread evenly over ``tokens`` (a fixed probe or label batch)."""
    starts = torch.linspace(0, len(tokens) - context - 2, count).long()
    return windows(tokens, starts, context)
