"""Causal linear attention (seed-v1.md §2, "local causal linear attention"):

    A[t] = Σ_{s≤t} (φq_t · φk_s) v_s / max(φq_t · Σ_{s≤t} φk_s, ε)

with φ = ELU + 1 applied by the caller (inputs here are already feature-mapped) and no 1/√d.
Three implementations of the same definition, tensors [B, H, S, d]:

    causal_linear_attention          chunked: quadratic inside a chunk, a d×d state between chunks;
                                     extra memory O(B·H·S/C·d²) — the one the model uses
    causal_linear_attention_naive    the definition as a masked S×S product (reference for tests)
    causal_linear_attention_running_sum
                                     v1's computation: materialises the B×H×S×d×d running sum
                                     (kept as the baseline the benchmark measures against)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """σ(u) = ELU(u) + 1, a positive feature map (Katharopoulos et al. 2020, eq. 7)."""
    return F.elu(x) + 1.0


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"expected q, k [B, H, S, d] and v [B, H, S, e]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )


def causal_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int = 64, eps: float = EPS
) -> torch.Tensor:
    """Chunked causal linear attention. q, k: [B, H, S, d] (feature-mapped), v: [B, H, S, e] -> [B, H, S, e].

    A ones column appended to v carries the normaliser: [v, 1] gives numerator and Σφk in one product.
    Per chunk c (G = B·H·n chunks of C positions, flattened into one batch of matrix products):
        o_c = tril(q_c k_cᵀ) [v_c, 1]  +  q_c Σ_{c'<c} k_c'ᵀ [v_c', 1]        [C, e+1]
        out = o[:, :e] / max(o[:, e], ε)
    """
    _check(q, k, v)
    B, H, S, d = q.shape
    e = v.shape[-1]
    C = min(chunk_size, S)
    n = -(-S // C)
    v1 = torch.cat([v, v.new_ones(B, H, S, 1)], dim=-1)  # [B, H, S, e+1]
    pad = n * C - S
    if pad:  # zero keys add nothing to any sum; padded queries are cropped
        q, k, v1 = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v1))
    qc = q.reshape(B * H * n, C, d)  # [G, C, d]
    kc = k.reshape(B * H * n, C, d)
    vc = v1.reshape(B * H * n, C, e + 1)

    scores = torch.bmm(qc, kc.transpose(1, 2)).tril_()  # [G, C, C]   φq_t·φk_s, s ≤ t within the chunk
    kv = torch.bmm(kc.transpose(1, 2), vc).view(B * H, n, d, e + 1)  # per-chunk Σ φk [v, 1]ᵀ
    state = F.pad(kv[:, :-1].cumsum(1), (0, 0, 0, 0, 1, 0))  # [B·H, n, d, e+1]  exclusive: chunks before
    o = torch.baddbmm(torch.bmm(scores, vc), qc, state.view(B * H * n, d, e + 1))  # intra + inter [G, C, e+1]
    out = o[..., :e] / o[..., e:].clamp_min(eps)
    return out.view(B, H, n * C, e)[:, :, :S]


def causal_linear_attention_naive(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """The definition: masked S×S scores. Same signature as causal_linear_attention."""
    _check(q, k, v)
    S = q.shape[-2]
    mask = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-1, -2)).masked_fill(~mask, 0.0)  # [B, H, S, S]
    return (scores @ v) / scores.sum(-1, keepdim=True).clamp_min(eps)


def causal_linear_attention_running_sum(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """v1's computation: cumulative Σ_{s≤t} φk_s v_sᵀ materialised as [B, H, S, d, e]."""
    _check(q, k, v)
    kv = torch.cumsum(k.unsqueeze(-1) * v.unsqueeze(-2), dim=2)  # [B, H, S, d, e]
    ks = torch.cumsum(k, dim=2)  # [B, H, S, d]
    num = torch.einsum("bhsd,bhsde->bhse", q, kv)
    den = (q * ks).sum(-1, keepdim=True)
    return num / den.clamp_min(eps)
