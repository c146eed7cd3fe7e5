"""The one nanoGPT-shaped model of the tests and the benchmarks, and its loss.

A character-level GPT written here: pre-LayerNorm blocks, causal attention with no
qk-norm, GELU MLP, learned positions, input and output embeddings tied as in GPT-2.
By default it is initialised as nanoGPT does (normal 0.02, the residual projections
scaled by 1/sqrt(2·layers)) and has no dropout: the ``char_gpt`` family and
``bench/perf/client_steps.py`` train it so. The exact-Hessian checks and the curvature
tracker's benchmark take PyTorch's default initialisation (``nanogpt_init=False``),
float64 weights, dropout, or the attention spelled out (``attention="eager"``), the
reference that ``tests/test_sdpa_hvp.py`` holds SDPA's Hessian-vector products to.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION = ("sdpa", "eager")


class Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float = 0.0, attention: str = "sdpa") -> None:
        super().__init__()
        if attention not in ATTENTION:
            raise ValueError(f"attention={attention!r}: use one of {ATTENTION}")
        self.heads, self.dropout, self.attention = heads, dropout, attention
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        if self.attention == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        t = q.shape[2]
        scores = (q @ k.transpose(-2, -1)) / (k.shape[-1] ** 0.5)  # (B, nh, T, T)
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return F.dropout(weights, p) @ v  # (B, nh, T, hs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        x = x + self.proj(self.attend(q, k, v).transpose(1, 2).reshape(b, t, d))
        mlp = self.down(F.gelu(self.up(self.ln2(x))))
        return x + F.dropout(mlp, self.dropout, self.training)


class GPT(nn.Module):
    def __init__(
        self,
        vocab: int,
        context: int,
        d: int,
        layers: int,
        heads: int,
        *,
        dropout: float = 0.0,
        attention: str = "sdpa",
        nanogpt_init: bool = True,
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.tokens = nn.Embedding(vocab, d)
        self.positions = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads, dropout, attention) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tokens.weight  # tied, as in GPT-2
        if not nanogpt_init:
            return
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, 0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            assert isinstance(block, Block)
            for residual in (block.proj, block.down):
                nn.init.normal_(residual.weight, 0.0, 0.02 / math.sqrt(2 * layers))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tokens(idx) + self.positions(positions)
        x = F.dropout(x, self.dropout, self.training)
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.ln_f(x))
        return logits  # (B, T, vocab)


def next_token_loss(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of rows (inputs rows[:, :-1], targets rows[:, 1:])."""
    logits = model(rows[:, :-1])  # (B, T, vocab)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))


def adamw_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """nanoGPT's two groups: weight decay on matrices and embeddings, none on the rest."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
