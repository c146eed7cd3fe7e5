"""HVPs through F.scaled_dot_product_attention: on CPU its default (flash) kernel has no
double backward, so the probe graph and the products run under the math kernel. Checked
against the dense Hessian of the same model with the attention spelled out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgewatch.monitor import SharpnessTracker, sharpness
from edgewatch.monitor.hvp import HessianOperator
from edgewatch_testkit.gpt import GPT, next_token_loss


def gpt_pair(dropout: float = 0.0) -> tuple[GPT, GPT, torch.Tensor]:
    """The same float64 weights with SDPA and with eager attention, and a token batch."""
    torch.manual_seed(0)
    # vocab 11, context 6, d 8, one layer of 2 heads
    sdpa = GPT(11, 6, 8, 1, 2, dropout=dropout, nanogpt_init=False).double()
    eager = GPT(11, 6, 8, 1, 2, dropout=dropout, attention="eager", nanogpt_init=False).double()
    eager.load_state_dict(sdpa.state_dict())
    batch = torch.randint(0, 11, (4, 7), generator=torch.Generator().manual_seed(1))
    return sdpa, eager, batch


def dense_by_hvps(model: torch.nn.Module, batch: torch.Tensor) -> np.ndarray:
    """The dense Hessian, one HVP per column, on the eager model (no SDPA on this path).

    (torch.func.jacrev twice, which the MLP problems use, returns a wrong Hessian for
    this model under torch 2.13: off by 10% against finite differences.)
    """
    op = HessianOperator(list(model.parameters()), lambda: next_token_loss(model, batch))
    eye = torch.eye(op.dim, dtype=torch.float64)
    dense = torch.stack([op(eye[i]) for i in range(op.dim)], dim=1).numpy()
    return np.asarray(0.5 * (dense + dense.T))


def flat_gradient(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(next_token_loss(model, batch), list(model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


def shifted(model: torch.nn.Module, v: torch.Tensor, eps: float) -> None:
    sizes = [p.numel() for p in model.parameters()]
    with torch.no_grad():
        for p, chunk in zip(model.parameters(), torch.split(v, sizes), strict=True):
            p.add_(eps * chunk.view_as(p))


def test_the_fused_cpu_attention_kernel_has_no_double_backward() -> None:
    # Why hvp.py selects the math kernel: with the fused kernel (torch's default on the
    # CPU; selected here explicitly, as other code may have changed the default), the
    # second backward fails.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 2, 5, 4, requires_grad=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        loss = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).sum()
        (grad,) = torch.autograd.grad(loss, q, create_graph=True)
    with pytest.raises(RuntimeError, match="not implemented"):
        torch.autograd.grad(grad, q, grad_outputs=torch.ones_like(grad))


def test_sdpa_sharpness_matches_the_dense_hessian_of_eager_attention() -> None:
    sdpa, eager, batch = gpt_pair()
    exact = np.linalg.eigvalsh(dense_by_hvps(eager, batch))[-1]
    est = sharpness(
        sdpa,
        lambda: next_token_loss(sdpa, batch),
        tol=1e-9,
        max_iter=150,
        generator=torch.Generator().manual_seed(0),
    )
    assert est.converged
    assert est.value == pytest.approx(exact, rel=1e-8)


def test_the_reference_hvp_is_a_derivative_of_the_gradient() -> None:
    # The dense reference comes from eager-attention HVPs: ground them in finite differences.
    _, eager, batch = gpt_pair()
    op = HessianOperator(list(eager.parameters()), lambda: next_token_loss(eager, batch))
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    hv = op(v)
    eps = 1e-5
    shifted(eager, v, eps)
    plus = flat_gradient(eager, batch)
    shifted(eager, v, -2 * eps)
    minus = flat_gradient(eager, batch)
    assert torch.allclose((plus - minus) / (2 * eps), hv, rtol=1e-6, atol=1e-7)


def test_sdpa_hvps_equal_eager_ones_with_causal_mask_in_float64() -> None:
    sdpa, eager, batch = gpt_pair()
    params_s, params_e = list(sdpa.parameters()), list(eager.parameters())
    op_s = HessianOperator(params_s, lambda: next_token_loss(sdpa, batch))
    op_e = HessianOperator(params_e, lambda: next_token_loss(eager, batch))
    v = torch.randn(op_s.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert op_s.loss == pytest.approx(op_e.loss, rel=1e-12)
    assert torch.allclose(op_s(v), op_e(v), rtol=1e-9, atol=1e-12)


def test_sdpa_with_dropout_in_train_mode_gives_one_symmetric_operator() -> None:
    sdpa, _, batch = gpt_pair(dropout=0.2)
    sdpa.train()
    op = HessianOperator(list(sdpa.parameters()), lambda: next_token_loss(sdpa, batch))
    g = torch.Generator().manual_seed(3)
    v, w = (torch.randn(op.dim, generator=g, dtype=torch.float64) for _ in range(2))
    # The mask is drawn once, in the probe's forward: every product sees the same matrix.
    assert float(v @ op(w)) == pytest.approx(float(w @ op(v)), rel=1e-9)
    assert torch.equal(op(v), op(v))
    tracker = SharpnessTracker(sdpa, lambda: next_token_loss(sdpa, batch), seed=0, max_hvps=60)
    est = None
    while est is None:
        est = tracker.advance()
    assert np.isfinite(est.value) and est.value > 0


def test_hf_gpt2_with_sdpa_agrees_with_eager_attention() -> None:
    transformers = pytest.importorskip("transformers")
    config = dict(
        vocab_size=32,
        n_positions=16,
        n_embd=16,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    sdpa = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(**config, attn_implementation="sdpa")
    ).double()
    eager = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(**config, attn_implementation="eager")
    ).double()
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa"
    tokens = torch.randint(0, 32, (3, 12), generator=torch.Generator().manual_seed(1))
    values = []
    for model in (sdpa, eager):
        est = sharpness(
            model,
            lambda model=model: model(tokens, labels=tokens).loss,
            tol=1e-8,
            max_iter=120,
            generator=torch.Generator().manual_seed(0),
        )
        assert est.converged and np.isfinite(est.value)
        values.append(est.value)
    assert values[0] == pytest.approx(values[1], rel=1e-6)
