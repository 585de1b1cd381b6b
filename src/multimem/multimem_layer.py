"""MultiMemoryLayer (seed-v1.md §2): local causal linear attention plus a landmark-mixed readout
of N compressive memories (Infini-attention, Munkhdalai et al. 2024), with every v1 protocol
choice as a switch of `MemoryConfig`.

Letters: b batch, h head, s/t position, n memory slot, d head dim; x [B, S, D], Q/K/V [B, H, S, d].

    h = LN(x);  Q, K, V = h W_q, h W_k, h W_v                 (no bias, no RoPE)
    A_loc[t] = causal linear attention (linear_attention.py)
    A_n[t]   = M_nᵀ σ(Q_t) / max(σ(Q_t) · z_n, ε)             (Infini-attention eq. 3, per memory)
    r_n[t]   = φ(Q_t) · ℓ_n            relevance: per token (causal), or its mean over t (v1)
    w[t]     = softmax_n(r[t])          over all / non-empty / top-k memories
    O        = g A_mix + (1 - g) A_loc,  A_mix = Σ_n w_n A_n,  g = sigmoid(γ_h), γ init 0
    layer    x + W_o O + MLP(LN' x)     (parallel residual; LN' = LN when layernorm: shared)

Writes (after the read in the LM protocol; explicit per slot in the selection protocol), slot j:
    simple:  M_j += Σ σ(K) Vᵀ / c_M,  z_j += Σ σ(K) / c_z              (Infini-attention eq. 4)
    delta:   V replaced by V − M_jᵀσ(K) / max(σ(K)·z_j, ε) first          (eq. 5)
    readout_norm v1: c_M = B·S, c_z = B (the readout comes out 1/S too small);
    exact: c_M = c_z = B for a shared bank, 1 per example for a per-example bank.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from .config import ModelConfig
from .landmarks import build_landmark, relevance
from .linear_attention import causal_linear_attention, feature_map
from .memory_bank import MemoryBank
from .pythia_layer import MLP


class MemoryReadout(NamedTuple):
    out: torch.Tensor  # [B, S, D] layer output
    mix_weights: torch.Tensor | None  # [B, H, S, N]


class MultiMemoryAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg, self.mem = cfg, cfg.memory
        D, H = cfg.hidden, cfg.heads
        self.H, self.d = H, cfg.head_dim
        self.q_proj = nn.Linear(D, D, bias=False)
        self.k_proj = nn.Linear(D, D, bias=False)
        self.v_proj = nn.Linear(D, D, bias=False)
        self.o_proj = nn.Linear(D, D, bias=False)
        self.gate = nn.Parameter(torch.zeros(H))  # γ_h, g = sigmoid(γ) = 0.5 at init
        self.landmark = build_landmark(cfg)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, S, _ = t.shape
        return t.view(B, S, self.H, self.d).transpose(1, 2)  # [B, H, S, d]

    def qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._heads(self.q_proj(h)), self._heads(self.k_proj(h)), self._heads(self.v_proj(h))

    # ---- read -----------------------------------------------------------------------------
    def scores(self, h: torch.Tensor, q: torch.Tensor, bank: MemoryBank) -> torch.Tensor:
        """Landmark relevance r [B, H, S, N], after the relevance and empty-memory switches."""
        assert self.landmark is not None
        r = relevance(self.landmark, self.landmark.query(h, q), self.landmark.vectors(bank), self.mem.score_scale)
        if self.mem.relevance == "sequence_mean":  # v1: one score per sequence, averages future q too
            r = r.mean(dim=2, keepdim=True).expand_as(r)
        empty = self._empty(bank, r)
        if self.mem.empty == "zero_score":
            r = r.masked_fill(empty, 0.0)
        else:
            r = r.masked_fill(empty, float("-inf"))
        return r

    def _empty(self, bank: MemoryBank, like: torch.Tensor) -> torch.Tensor:
        e = bank.empty  # [N] or [B, N]
        return (e if e.dim() == 1 else e[:, None, None, :]).expand_as(like)

    def mix_weights(
        self, h: torch.Tensor, q: torch.Tensor, bank: MemoryBank, mixer: str, oracle_slot: torch.Tensor | None
    ) -> torch.Tensor:
        """w [B, H, S, N]; rows sum to 1 over the memories taking part, or are all 0."""
        B, H, S, _ = q.shape
        N = bank.num_memories
        shape = (B, H, S, N)
        if mixer == "none":
            return q.new_zeros(shape)
        if mixer == "oracle":
            if oracle_slot is None:
                raise ValueError("mixer 'oracle' needs oracle_slot (LongTensor [B])")
            w = torch.nn.functional.one_hot(oracle_slot.to(q.device), N).to(q.dtype)
            return w[:, None, None, :].expand(shape)
        if mixer == "uniform":
            full = (~self._empty(bank, q.new_zeros(shape))).to(q.dtype)
            return full / full.sum(-1, keepdim=True).clamp_min(1.0)
        r = self.scores(h, q, bank)
        if self.mem.top_k:
            kth = r.topk(self.mem.top_k, dim=-1).values[..., -1:]
            r = r.masked_fill(r < kth, float("-inf"))
        none_left = torch.isneginf(r).all(-1, keepdim=True)
        w = torch.softmax(r.masked_fill(none_left, 0.0), dim=-1)
        return w.masked_fill(none_left, 0.0)

    def read(self, q: torch.Tensor, bank: MemoryBank) -> torch.Tensor:
        """A_n [B, H, S, N, d]: every memory read by every query (one batched einsum)."""
        sq = feature_map(q)
        M, z = bank.M.to(q.dtype), bank.z.to(q.dtype)
        if M.dim() == 4:  # shared [N, H, d, e]
            num = torch.einsum("bhsd,nhde->bhsne", sq, M)
            den = torch.einsum("bhsd,nhd->bhsn", sq, z)
        else:  # per example [B, N, H, d, e]
            num = torch.einsum("bhsd,bnhde->bhsne", sq, M)
            den = torch.einsum("bhsd,bnhd->bhsn", sq, z)
        return num / den.clamp_min(self.mem.eps).unsqueeze(-1)

    # ---- write ----------------------------------------------------------------------------
    def write(self, k: torch.Tensor, v: torch.Tensor, bank: MemoryBank, slot: int | torch.Tensor) -> None:
        """Write K, V [B, H, S, d] of one segment to `slot` (int, or LongTensor [B] per example)."""
        B, H, S, d = k.shape
        sk = feature_map(k)
        onehot = bank.slot_mask(slot)  # [*, N]
        if self.mem.write == "delta":  # eq. 5: store only what the memory cannot yet retrieve
            Mj = bank.select(bank.M, onehot).to(k.dtype)  # [*, H, d, e]
            zj = bank.select(bank.z, onehot).to(k.dtype)  # [*, H, d]
            if Mj.dim() == 3:
                Mj, zj = Mj.unsqueeze(0), zj.unsqueeze(0)
            retrieved = (sk @ Mj) / (sk @ zj.unsqueeze(-1)).clamp_min(self.mem.eps)
            v = v - retrieved
        kv = sk.transpose(-1, -2) @ v  # [B, H, d, e]  Σ_s σ(K_s) V_sᵀ
        ks, kraw = sk.sum(2), k.sum(2)  # [B, H, d]
        if bank.batch_size is None:  # shared bank: average over the batch
            c_z = B
            c_M = B * S if self.mem.readout_norm == "v1" else B
            dM, dz, dkey = kv.sum(0) / c_M, ks.sum(0) / c_z, kraw.sum(0) / B
            keys = k.mean(0)  # [H, S, d]
        else:
            c_M = S if self.mem.readout_norm == "v1" else 1
            dM, dz, dkey, keys = kv / c_M, ks, kraw, k
        bank.add(onehot, dM, dz, dkey, float(S), keys=keys, replace_keys=self.mem.encoder_keys == "last_write")

    # ---- forward --------------------------------------------------------------------------
    def forward(
        self,
        h: torch.Tensor,
        bank: MemoryBank | None,
        update_memory: bool = False,
        mixer: str | None = None,
        oracle_slot: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h = LN(x) [B, S, D] -> (W_o O [B, S, D], mixing weights [B, H, S, N] or None)."""
        B, S, D = h.shape
        q, k, v = self.qkv(h)
        local = causal_linear_attention(feature_map(q), feature_map(k), v, eps=self.mem.eps)  # [B, H, S, d]
        g = torch.sigmoid(self.gate).view(1, self.H, 1, 1)
        w = None
        if bank is not None:
            w = self.mix_weights(h, q, bank, mixer or self.mem.landmark, oracle_slot)  # [B, H, S, N]
            mixed = (w.unsqueeze(-1) * self.read(q, bank)).sum(3)  # [B, H, S, d]
            o = g * mixed + (1 - g) * local
        else:
            o = (1 - g) * local  # A_mix = 0
        if update_memory and bank is not None:  # write after the read (v1), detached
            self.write(k.detach(), v.detach(), bank, bank.pointer)
            bank.pointer = (bank.pointer + 1) % bank.num_memories
        out = self.o_proj(o.transpose(1, 2).reshape(B, S, D))
        return out, w


class MultiMemoryLayer(nn.Module):
    """x + W_o O + MLP(LN' x): parallel residual, LayerNorm shared (v1) or separate."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.post_attention_layernorm = (
            nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps) if cfg.layernorm == "separate" else None
        )
        self.attention = MultiMemoryAttention(cfg)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        bank: MemoryBank | None = None,
        update_memory: bool = False,
        mixer: str | None = None,
        oracle_slot: torch.Tensor | None = None,
    ) -> MemoryReadout:
        h = self.input_layernorm(x)
        attn, w = self.attention(h, bank, update_memory, mixer, oracle_slot)
        h2 = h if self.post_attention_layernorm is None else self.post_attention_layernorm(x)
        return MemoryReadout(x + attn + self.mlp(h2), w)

    def write(self, x: torch.Tensor, bank: MemoryBank, slot: int | torch.Tensor) -> None:
        """Write the segment x [B, L, D] (this layer's input) to memory `slot`."""
        _, k, v = self.attention.qkv(self.input_layernorm(x))
        self.attention.write(k, v, bank, slot)
