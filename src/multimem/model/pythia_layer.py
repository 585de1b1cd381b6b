"""A GPT-NeoX (Pythia) decoder layer, named like `transformers`' GPTNeoXLayer so weights import
one-to-one (hf_import.py):

    attn = dense(softmax(QKᵀ/√d + causal) V),  Q, K rotated on the first rotary_pct·d dims (RoPE)
    x'   = x + attn(LN₁ x) + MLP(LN₂ x)          parallel residual (use_parallel_residual=True)

With `layernorm: shared` (v1's layer) LN₂ is LN₁ — one LayerNorm fewer per layer, which is what
gives v1's 70,418,440 parameters.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(cfg.hidden, cfg.ffn)
        self.dense_4h_to_h = nn.Linear(cfg.ffn, cfg.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x)))


class Rotary(nn.Module):
    """RoPE (Su et al. 2021) on the first `rotary_ndims` dims, GPT-NeoX's rotate-half layout."""

    def __init__(self, rotary_ndims: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, rotary_ndims, 2, dtype=torch.float32) / rotary_ndims))
        self.ndims = 2 * len(inv_freq)  # as transformers: an odd rotary_ndims rotates one dim more
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k [B, H, S, d] -> rotated q, k."""
        if self.ndims == 0:
            return q, k
        S = q.shape[-2]
        t = torch.arange(S, device=q.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq)  # [S, r/2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [S, r]
        cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)

        def rot(x: torch.Tensor) -> torch.Tensor:
            xr, xp = x[..., : self.ndims], x[..., self.ndims :]
            x1, x2 = xr.chunk(2, dim=-1)
            return torch.cat([xr * cos + torch.cat([-x2, x1], dim=-1) * sin, xp], dim=-1)

        return rot(q), rot(k)


class PythiaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.H, self.d = cfg.heads, cfg.head_dim
        self.query_key_value = nn.Linear(cfg.hidden, 3 * cfg.hidden)  # fused, per-head [q|k|v] layout
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)
        self.rotary = Rotary(int(self.d * cfg.rotary_pct), cfg.rotary_base)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, S, D = h.shape
        qkv = self.query_key_value(h).view(B, S, self.H, 3 * self.d).transpose(1, 2)  # [B, H, S, 3d]
        q, k, v = qkv.chunk(3, dim=-1)  # [B, H, S, d] each
        q, k = self.rotary(q, k)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, S, d]
        return self.dense(a.transpose(1, 2).reshape(B, S, D))


class PythiaLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.post_attention_layernorm = (
            nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps) if cfg.layernorm == "separate" else None
        )
        self.attention = PythiaAttention(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_layernorm(x)
        h2 = h if self.post_attention_layernorm is None else self.post_attention_layernorm(x)
        return x + self.attention(h) + self.mlp(h2)
