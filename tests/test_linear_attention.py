"""The chunked causal linear attention agrees with the definition (and with v1's running sum),
outputs and gradients, in float64 and float32."""

import pytest
import torch

from multimem.model.linear_attention import (
    causal_linear_attention,
    causal_linear_attention_naive,
    causal_linear_attention_running_sum,
    feature_map,
)

SHAPES = [(1, 1, 1, 4, 16), (2, 3, 17, 8, 4), (2, 2, 64, 16, 64), (1, 4, 130, 32, 32), (3, 2, 256, 8, 64)]
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=2e-4)}


def _inputs(B, H, S, d, dtype):
    g = torch.Generator().manual_seed(B * 1000 + S)
    q, k, v = (torch.randn(B, H, S, d, generator=g, dtype=dtype, requires_grad=True) for _ in range(3))
    return q, k, v


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("B,H,S,d,C", SHAPES, ids=[f"B{b}-H{h}-S{s}-d{d}-C{c}" for b, h, s, d, c in SHAPES])
@pytest.mark.parametrize("reference", [causal_linear_attention_naive, causal_linear_attention_running_sum],
                         ids=["naive", "running_sum"])
def test_chunked_matches_reference(B, H, S, d, C, dtype, reference):
    q, k, v = _inputs(B, H, S, d, dtype)
    grad_out = torch.randn(B, H, S, d, dtype=dtype)

    def run(fn, **kw):
        out = fn(feature_map(q), feature_map(k), v, **kw)
        grads = torch.autograd.grad(out, (q, k, v), grad_out)
        return out, grads

    out, grads = run(causal_linear_attention, chunk_size=C)
    ref, ref_grads = run(reference)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    for name, g, r in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(g, r, **TOL[dtype], msg=lambda m: f"grad {name}: {m}")


def test_chunked_is_causal():
    q, k, v = _inputs(1, 2, 40, 8, torch.float64)
    out = causal_linear_attention(feature_map(q), feature_map(k), v, chunk_size=16)
    t = 20
    gq, gk, gv = torch.autograd.grad(out[:, :, t].sum(), (q, k, v))
    for g in (gq, gk, gv):
        assert g[:, :, t + 1:].abs().max() == 0
    assert gk[:, :, : t + 1].abs().max() > 0


def test_rejects_bad_shapes():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"\[B, H, S, d\]"):
        causal_linear_attention(x, x, x)
