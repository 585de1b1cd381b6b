"""MultiMemoryLayer (seed-v1.md §2): local causal linear attention plus a landmark-mixed readout
of N compressive memories (Infini-attention, Munkhdalai et al. 2024), with every v1 protocol
choice as a switch of `MemoryConfig`.

Letters: b batch, h head, s/t position, n memory slot, d head dim; x [B, S, D], Q/K/V [B, H, S, d].

    h = LN(x);  Q, K, V = h W_q, h W_k, h W_v                 (no bias, no RoPE)
    A_loc[t] = causal linear attention (linear_attention.py)
    A_n[t]   = M_nᵀ σ(Q_t) / max(σ(Q_t) · z_n, ε)             (Infini-attention eq. 3, per memory)
    r_n[t]   = φ(Q_t) · ℓ_n            relevance: per token (causal), or its mean over t (v1); centring,
                                        cosine and a learned temperature are switches (landmarks.relevance)
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
import torch.nn.functional as F

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
        self.chunk_size = 64  # chunk of the local linear attention (a speed knob; the result is the same)

    def qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K, V [B, H, S, d] from h [B, S, D], as one matrix product with the stacked weights."""
        B, S, _ = h.shape
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])  # [3D, D]
        qkv = F.linear(h, w).view(B, S, 3, self.H, self.d).transpose(1, 3)  # [B, H, 3, S, d]
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

    # ---- read -----------------------------------------------------------------------------
    def scores(
        self, h: torch.Tensor, q: torch.Tensor, bank: MemoryBank, sq: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Landmark relevance r [B, H, S, N], after the relevance, scoring and empty-memory switches
        (`sq`: σ(q) when already computed):

            r_n[t] = s · q'_t · ℓ'_n   (landmarks.relevance: score_centering, score, score_temperature;
                                         v1: φ(q_t)·ℓ_n, / √d with sqrt_d), its mean over t with sequence_mean,
            then empty slots: 0 (zero_score) or −inf (masked); centring averages non-empty slots only."""
        assert self.landmark is not None
        phi_q = self.landmark.query(h, q, sq)  # [B, H, S, d]
        seq_mean = self.mem.relevance == "sequence_mean"  # v1: one score per sequence, averages future q too
        r = relevance(self.landmark, phi_q, self.landmark.vectors(bank), self.mem.score_scale,
                      empty=bank.empty, sequence_mean=seq_mean)  # [B, H, S|1, N]
        empty = self._empty(bank, r)
        if self.mem.empty == "zero_score":
            r = r.masked_fill(empty, 0.0)
        else:
            r = r.masked_fill(empty, float("-inf"))
        return r.expand(*q.shape[:3], r.shape[-1])

    def _empty(self, bank: MemoryBank, like: torch.Tensor) -> torch.Tensor:
        e = bank.empty  # [N] or [B, N]
        return (e if e.dim() == 1 else e[:, None, None, :]).expand_as(like)

    def mix_weights(
        self, h: torch.Tensor, q: torch.Tensor, bank: MemoryBank, mixer: str, oracle_slot: torch.Tensor | None,
        sq: torch.Tensor | None = None,
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
        if self.mem.empty == "zero_score" and bool(bank.empty.all()):
            # v1: every memory empty (first batch after a reset) -> each scores 0 and the landmark is never
            # evaluated, so its parameters get no gradient (None) and AdamW skips them (no decay, no step)
            return q.new_full(shape, 1.0 / N)  # softmax of N zeros
        r = self.scores(h, q, bank, sq)
        if self.mem.relevance == "sequence_mean":  # one row per sequence: mix once, broadcast over S
            r = r[:, :, :1]
        if self.mem.top_k:
            kth = r.topk(self.mem.top_k, dim=-1).values[..., -1:]
            r = r.masked_fill(r < kth, float("-inf"))
        none_left = torch.isneginf(r).all(-1, keepdim=True)
        w = torch.softmax(r.masked_fill(none_left, 0.0), dim=-1)
        return w.masked_fill(none_left, 0.0).expand(shape)

    def read(self, q: torch.Tensor, bank: MemoryBank) -> torch.Tensor:
        """A_n [B, H, S, N, d]: every memory read by every query (one batched einsum); the definition
        that `read_mixed`, which the forward pass uses, contracts with the mixing weights."""
        sq = feature_map(q)
        M, z = bank.M.to(q.dtype), bank.z.to(q.dtype)
        if M.dim() == 4:  # shared [N, H, d, e]
            num = torch.einsum("bhsd,nhde->bhsne", sq, M)
            den = torch.einsum("bhsd,nhd->bhsn", sq, z)
        else:  # per example [B, N, H, d, e]
            num = torch.einsum("bhsd,bnhde->bhsne", sq, M)
            den = torch.einsum("bhsd,bnhd->bhsn", sq, z)
        return num / den.clamp_min(self.mem.eps).unsqueeze(-1)

    def read_mixed(self, sq: torch.Tensor, w: torch.Tensor, bank: MemoryBank) -> torch.Tensor:
        """A_mix = Σ_n w_n A_n [B, H, S, e] without materialising every A_n:

            Σ_n w_n M_nᵀσ(q) / max(σ(q)·z_n, ε) = [c_n σ(q)]_{n,d} · [M_n]_{(n,d), e},  c_n = w_n / max(σ(q)·z_n, ε)

        one matrix product over the stacked (memory, key-dim) axis N·d per head. sq = σ(q) [B, H, S, d]."""
        M, z = bank.M.to(sq.dtype), bank.z.to(sq.dtype)
        N, H, d, e = M.shape[-4:]
        if M.dim() == 4:  # shared [N, H, d, e]
            den = torch.einsum("bhsd,nhd->bhsn", sq, z)
            M = M.transpose(0, 1).reshape(H, N * d, e)  # [H, N·d, e]
        else:  # per example [B, N, H, d, e]
            den = torch.einsum("bhsd,bnhd->bhsn", sq, z)
            M = M.transpose(1, 2).reshape(M.shape[0], H, N * d, e)  # [B, H, N·d, e]
        c = w / den.clamp_min(self.mem.eps)  # [B, H, S, N]
        x = (c.unsqueeze(-1) * sq.unsqueeze(-2)).flatten(-2)  # [B, H, S, N·d]
        return x @ M  # [B, H, S, e]

    # ---- write ----------------------------------------------------------------------------
    def write(self, k: torch.Tensor, v: torch.Tensor, bank: MemoryBank, slot: int | torch.Tensor | None) -> None:
        """Write K, V of segments to memory.

        slot int or LongTensor [B]: one segment per example, K, V [B, H, S, d];
        slot None: segment n to slot n for every slot at once, K, V [B, N, H, S, d] — the same result
        as N single writes, since a write to slot n reads and changes slot n only."""
        S = k.shape[-2]
        B = k.shape[0]
        sk = feature_map(k)
        onehot = None if slot is None else bank.slot_mask(slot)  # [*, N]
        if self.mem.write == "delta":  # eq. 5: store only what the memory cannot yet retrieve
            Mj, zj = bank.M.to(k.dtype), bank.z.to(k.dtype)  # [*, N, H, d, e], [*, N, H, d]
            if onehot is not None:
                Mj, zj = bank.select(Mj, onehot), bank.select(zj, onehot)  # [*, H, d, e], [*, H, d]
            retrieved = (sk @ Mj) / (sk @ zj.unsqueeze(-1)).clamp_min(self.mem.eps)
            v = v - retrieved
        kv = sk.transpose(-1, -2) @ v  # [B, (N,) H, d, e]  Σ_s σ(K_s) V_sᵀ
        ks, kraw = sk.sum(-2), k.sum(-2)  # [B, (N,) H, d]
        if bank.batch_size is None:  # shared bank: average over the batch
            c_M = B * S if self.mem.readout_norm == "v1" else B
            dM, dz, dkey, keys = kv.sum(0) / c_M, ks.sum(0) / B, kraw.sum(0) / B, k.mean(0)
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
        sq = feature_map(q)  # [B, H, S, d]
        local = causal_linear_attention(sq, feature_map(k), v, self.chunk_size, self.mem.eps)  # [B, H, S, d]
        g = torch.sigmoid(self.gate).view(1, self.H, 1, 1)
        w = None
        if bank is not None:
            w = self.mix_weights(h, q, bank, mixer or self.mem.landmark, oracle_slot, sq)  # [B, H, S, N]
            mixed = self.read_mixed(sq, w, bank)  # [B, H, S, d]
            o = torch.lerp(local, mixed, g)  # g A_mix + (1 - g) A_loc
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

    def write(self, x: torch.Tensor, bank: MemoryBank, slot: int | torch.Tensor | None) -> None:
        """Write the segment x [B, L, D] (this layer's input) to memory `slot`; with slot None,
        x [B, N, L, D] holds one segment per slot."""
        lead = x.shape[:-2]
        _, k, v = self.attention.qkv(self.input_layernorm(x.reshape(-1, *x.shape[-2:])))  # [B(·N), H, L, d]
        k, v = (t.reshape(*lead, *t.shape[1:]) for t in (k, v))
        self.attention.write(k, v, bank, slot)
