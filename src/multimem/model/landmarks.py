"""Landmarks: one vector per memory slot and head, scored against the query (seed-v1.md §1).

    relevance r_i[b, h, t] = φ(q_t) · ℓ_i[h] (× 1/√d where the landmark or `score_scale` says so)

| landmark     | ℓ_i                                             | φ(q)                  | parameters        |
|--------------|-------------------------------------------------|-----------------------|-------------------|
| memory_norm  | z_i = Σ σ(k)  (or its mean, landmark_norm=mean) | σ(q)                  | none              |
| learned      | W_l z_i, one d×d matrix shared by heads/slots   | σ(q)                  | d²                |
| hsa_mean     | running mean of raw keys written to slot i      | q (raw)               | none              |
| hsa_encoder  | per-head 2-layer bidirectional encoder over     | q_slc(LN x) per head, | D² + H·(2 encoder |
|              | [CLS; keys in slot i], CLS output × W_out       | always / √d           | layers + d + d²)  |

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
        self.landmark_norm = cfg.memory.landmark_norm

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


def relevance(landmark: Landmark, phi_q: torch.Tensor, vectors: torch.Tensor, scale: str) -> torch.Tensor:
    """r [B, H, S, N] = φ(q_t) · ℓ_n, with φq [B, H, S, d] and ℓ [N, H, d] or [B, N, H, d]."""
    eq = "bhsd,nhd->bhsn" if vectors.dim() == 3 else "bhsd,bnhd->bhsn"
    r = torch.einsum(eq, phi_q, vectors.to(phi_q.dtype))
    if landmark.always_scaled or scale == "sqrt_d":
        r = r / math.sqrt(phi_q.shape[-1])
    return r
