"""Landmarks: one vector per memory slot and head, scored against the query (seed-v1.md §1).

    relevance r_i[b, h, t] = φ(q_t) · ℓ_i[h] (× 1/√d where the landmark or `score_scale` says so)

| landmark     | ℓ_i                                             | φ(q)                  | parameters        |
|--------------|-------------------------------------------------|-----------------------|-------------------|
| memory_norm  | z_i = Σ σ(k)  (or its mean, landmark_norm=mean) | σ(q)                  | none              |
| learned      | W_l z_i, one d×d matrix shared by heads/slots   | σ(q)                  | d²                |
| hsa_mean     | running mean of raw keys written to slot i      | q (raw)               | none              |
| hsa_encoder  | per-head 2-layer bidirectional encoder over     | q_slc(LN x) per head, | D² + H·(2 encoder |
|              | [CLS; keys in slot i], CLS output × W_out       | always / √d           | layers + d + d²)  |

Scoring switches against selection collapse (`relevance`; v1 = none, dot, fixed):

    ū = mean of ℓ_m over the non-empty slots m of the bank                    [*, H, d]
    score_centering  none:    q' = φq,    ℓ'_n = ℓ_n
                     slots:   q' = φq,    ℓ'_n = ℓ_n − ū
                     project: q' = P φq,  ℓ'_n = P (ℓ_n − ū),   P = I − û ûᵀ, û = ū / ‖ū‖
    score            dot:     r_n = s · q'·ℓ'_n
                     cosine:  r_n = s · (√d q'/‖q'‖)·(√d ℓ'_n/‖ℓ'_n‖) = s · d · cos(q', ℓ'_n)
    score_temperature fixed:  s = 1/√d (landmark always scaled, or score_scale sqrt_d), else 1
                     learned: s = exp(τ_h), one τ per head, τ_h initialised to log of the fixed s

`slots` shifts every score of a query by the same φq·ū, so on its own it changes neither the argmax nor a
masked softmax; it matters with cosine (or next to zero_score empty slots). `project` also removes the
shared direction û from the query, which is what stops a slot with a larger shared component from winning
every query (tests/test_scoring_switches.py measures both).

Letters: b batch, n slot, h head, s position, c key-buffer position, d head dim, `*` bank batch dims.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .linear_attention import feature_map
from .memory_bank import MemoryBank


class Landmark(nn.Module):
    """Base: `query` gives φ(q) [B, H, S, d]; `vectors` gives ℓ [*, N, H, d]."""

    always_scaled = False

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        m = cfg.memory
        self.landmark_norm = m.landmark_norm
        self.centering, self.score, self.score_eps = m.score_centering, m.score, m.eps
        scaled = self.always_scaled or m.score_scale == "sqrt_d"  # fixed s = 1/√d, else 1
        # τ [H]: learned log-temperature per head, exp(τ) at init = the fixed scale (absent when fixed)
        init = -0.5 * math.log(cfg.head_dim) if scaled else 0.0
        tau = nn.Parameter(torch.full((cfg.heads,), init)) if m.score_temperature == "learned" else None
        self.register_parameter("log_temperature", tau)

    def query(self, h: torch.Tensor, q: torch.Tensor, sq: torch.Tensor | None = None) -> torch.Tensor:
        """φ(q) [B, H, S, d]; `sq` is σ(q) when the caller already has it."""
        return feature_map(q) if sq is None else sq

    def normaliser(self, bank: MemoryBank) -> torch.Tensor:
        """z_i, summed (v1) or averaged over the tokens written: [*, N, H, d]."""
        if self.landmark_norm == "sum":
            return bank.z
        return bank.z / bank.tokens.clamp_min(1.0)[..., None, None]

    def vectors(self, bank: MemoryBank) -> torch.Tensor:
        raise NotImplementedError


class MemoryNormLandmark(Landmark):
    def vectors(self, bank: MemoryBank) -> torch.Tensor:
        return self.normaliser(bank)


class LearnedLandmark(Landmark):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.proj = nn.Linear(cfg.head_dim, cfg.head_dim, bias=False)  # W_l: d×d

    def vectors(self, bank: MemoryBank) -> torch.Tensor:
        return self.proj(self.normaliser(bank))


class HSAMeanLandmark(Landmark):
    def query(self, h: torch.Tensor, q: torch.Tensor, sq: torch.Tensor | None = None) -> torch.Tensor:
        return q

    def vectors(self, bank: MemoryBank) -> torch.Tensor:
        return bank.key_sum / bank.tokens.clamp_min(1.0)[..., None, None]


class HSAEncoderLandmark(Landmark):
    """A bidirectional post-LN Transformer encoder per head (weights batched over heads, the same
    parameter count as H separate `nn.TransformerEncoderLayer(d, encoder_heads, encoder_ffn)` stacks)."""

    always_scaled = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        H, d, f, m = cfg.heads, cfg.head_dim, cfg.memory.encoder_ffn, cfg.memory
        if d % m.encoder_heads:
            raise ValueError(f"model.memory.encoder_heads={m.encoder_heads} must divide head dim {d}")
        self.heads, self.enc_heads, self.eps = H, m.encoder_heads, cfg.layer_norm_eps
        self.q_slc = nn.Linear(cfg.hidden, cfg.hidden, bias=False)  # separate selection query
        self.cls = nn.Parameter(torch.randn(H, d) * 0.02)
        self.out = nn.Parameter(torch.randn(H, d, d) * d**-0.5)  # W_out per head: ℓ = CLS_out W_out

        def p(*shape: int, std: float | None = None) -> nn.Parameter:
            return nn.Parameter(torch.randn(H, *shape) * std if std else torch.zeros(H, *shape))

        self.layers = nn.ModuleList()
        for _ in range(m.encoder_layers):
            layer = nn.ParameterDict({
                "in_w": p(3 * d, d, std=d**-0.5), "in_b": p(3 * d),
                "out_w": p(d, d, std=d**-0.5), "out_b": p(d),
                "ff1_w": p(f, d, std=d**-0.5), "ff1_b": p(f),
                "ff2_w": p(d, f, std=f**-0.5), "ff2_b": p(d),
                "ln1_w": nn.Parameter(torch.ones(H, d)), "ln1_b": p(d),
                "ln2_w": nn.Parameter(torch.ones(H, d)), "ln2_b": p(d),
            })
            self.layers.append(layer)

    def query(self, h: torch.Tensor, q: torch.Tensor, sq: torch.Tensor | None = None) -> torch.Tensor:
        B, S, D = h.shape
        return self.q_slc(h).view(B, S, self.heads, -1).transpose(1, 2)  # [B, H, S, d]

    @staticmethod
    def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ghti,hoi->ghto", x, w) + b[:, None, :]  # x [G, H, T, i] -> [G, H, T, o]

    def _ln(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * w[:, None, :] + b[:, None, :]

    def vectors(self, bank: MemoryBank) -> torch.Tensor:
        lead = bank.keys.shape[:-3]  # (*, N)
        H, C, d = bank.keys.shape[-3:]
        keys = bank.keys.reshape(-1, H, C, d)  # [G, H, C, d]
        G = keys.shape[0]
        x = torch.cat([self.cls[None, :, None, :].expand(G, H, 1, d), keys.to(self.cls.dtype)], dim=2)  # [G, H, 1+C, d]
        valid = torch.arange(C + 1, device=x.device) <= bank.key_len.reshape(-1, 1)  # [G, 1+C]
        attn_mask = valid.repeat_interleave(H, 0)[:, None, None, :]  # [G*H, 1, 1, T]
        e, hd = self.enc_heads, d // self.enc_heads
        for L in self.layers:
            qkv = self._linear(x, L["in_w"], L["in_b"])  # [G, H, T, 3d]
            T = qkv.shape[2]
            q, k, v = (t.reshape(G * H, T, e, hd).transpose(1, 2) for t in qkv.chunk(3, dim=-1))  # [GH,e,T,hd]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # 4-D: the fast kernels
            a = a.transpose(1, 2).reshape(G, H, T, d)
            x = self._ln(x + self._linear(a, L["out_w"], L["out_b"]), L["ln1_w"], L["ln1_b"])
            ff = self._linear(F.relu(self._linear(x, L["ff1_w"], L["ff1_b"])), L["ff2_w"], L["ff2_b"])
            x = self._ln(x + ff, L["ln2_w"], L["ln2_b"])
        cls = torch.einsum("ghd,hde->ghe", x[:, :, 0], self.out)  # [G, H, d]
        return cls.reshape(*lead, H, d)


LANDMARK_CLASSES: dict[str, type[Landmark]] = {
    "memory_norm": MemoryNormLandmark,
    "learned": LearnedLandmark,
    "hsa_mean": HSAMeanLandmark,
    "hsa_encoder": HSAEncoderLandmark,
}


def build_landmark(cfg: ModelConfig) -> Landmark | None:
    """The landmark module of `cfg.memory.landmark`; None for the reference mixers."""
    cls = LANDMARK_CLASSES.get(cfg.memory.landmark)
    return cls(cfg) if cls else None


def _rms_normalise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """√d x / max(‖x‖, ε) over the last axis (unit RMS, as QK-norm); a zero vector stays 0."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)
    return x * (math.sqrt(x.shape[-1]) / norm)


def relevance(
    landmark: Landmark, phi_q: torch.Tensor, vectors: torch.Tensor, scale: str,
    empty: torch.Tensor | None = None, sequence_mean: bool = False,
) -> torch.Tensor:
    """r [B, H, S, N] (S = 1 with `sequence_mean`) from φq [B, H, S, d] and ℓ [N, H, d] (shared bank) or
    [B, N, H, d] (per-example bank); `empty` [N] or [B, N] marks slots left out of the slot mean ū.

        r_n[t] = s · q'_t · ℓ'_n          (q', ℓ' and s by the scoring switches, module docstring)
        v1 (none, dot, fixed): r_n[t] = φ(q_t) · ℓ_n, divided by √d when the landmark or `scale` says so
        sequence_mean: r_n = mean_t r_n[t] = (mean_t q'_t) · ℓ'_n, the mean taken after the per-token
        centring and normalisation, so it is the mean of the per-token scores for every switch.

    ū is the mean over non-empty slots only (0 when none is); with a single non-empty slot ℓ'_n = 0, and
    its score is 0 for dot and cosine alike (finite)."""
    lm = landmark
    vectors = vectors.to(phi_q.dtype)  # [*, N, H, d]
    shared = vectors.dim() == 3
    if lm.centering != "none":
        keep = vectors.new_ones(vectors.shape[:-2]) if empty is None else (~empty).to(vectors.dtype)  # [*, N]
        count = keep.sum(-1).clamp_min(1.0)[..., None, None]  # [*, 1, 1]
        mean = (keep[..., None, None] * vectors).sum(-3) / count  # ū [*, H, d]
        vectors = vectors - mean.unsqueeze(-3)  # ℓ_n − ū  [*, N, H, d]
        if lm.centering == "project":
            u = mean / torch.linalg.vector_norm(mean, dim=-1, keepdim=True).clamp_min(lm.score_eps)  # û [*, H, d]
            un = u.unsqueeze(-3)  # [*, 1, H, d]
            vectors = vectors - (vectors * un).sum(-1, keepdim=True) * un  # P(ℓ_n − ū)  [*, N, H, d]
            uq = u[:, None, :] if shared else u[:, :, None, :]  # [H, 1, d] or [B, H, 1, d]
            phi_q = phi_q - (phi_q * uq).sum(-1, keepdim=True) * uq  # P φq  [B, H, S, d]
    if lm.score == "cosine":
        phi_q = _rms_normalise(phi_q, lm.score_eps)  # [B, H, S, d], norm √d
        vectors = _rms_normalise(vectors, lm.score_eps)  # [*, N, H, d], norm √d
    if sequence_mean:  # v1: one score per sequence; mean_t(q'_t)·ℓ' = mean_t(q'_t·ℓ'), computed once
        phi_q = phi_q.mean(dim=2, keepdim=True)  # [B, H, 1, d]
    eq = "bhsd,nhd->bhsn" if shared else "bhsd,bnhd->bhsn"
    r = torch.einsum(eq, phi_q, vectors)  # [B, H, S|1, N]
    if lm.log_temperature is not None:  # learned s = exp(τ_h)
        r = r * lm.log_temperature.exp().to(r.dtype)[:, None, None]  # τ [H] -> [H, 1, 1]
    elif lm.always_scaled or scale == "sqrt_d":  # fixed s = 1/√d
        r = r / math.sqrt(phi_q.shape[-1])
    return r
