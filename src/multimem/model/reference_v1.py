"""v1's MultiMemoryLayer computed the way v1's code did (seed-v1.md §2), the baseline that
tests check the project's layer against (in v1 mode) and that `multimem.bench` measures.

It differs from `multimem_layer.MultiMemoryLayer` in computation only, never in result:

    memories       a Python list of per-memory M_i [H, d, d], z_i [H, d] and a loop over them
                   (the project: one batched bank tensor [N, H, d, d], no loop)
    local          causal linear attention through the materialised [B, H, S, d, d] running sum
                   (the project: chunked, linear_attention.causal_linear_attention)

Letters: b batch, h head, s/t position, d key dim, e value dim. v1 switches only: shared state,
readout_norm v1 (M/(B·S), z/B), sequence-mean relevance, round-robin writes after the read (simple, or
the delta rule v1 ran: V − M_jᵀσ(K) / max(σ(K)·z_j, ε) written instead of V), detached; landmark
memory_norm or learned; one shared LayerNorm. An empty memory (Σ z < 1e-6, as v1 tested it) reads 0 and
scores 0 without its landmark being evaluated, so with every memory empty the learned landmark's
projection gets no gradient at all (None), as in v1.
Parameter names are those of MultiMemoryLayer, so one state_dict loads into both.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import MEMORY_SWITCHES, ModelConfig
from .linear_attention import causal_linear_attention_running_sum, feature_map
from .transformer import TransformerLM
from .multimem_layer import MemoryReadout
from .pythia_layer import MLP

V1_LANDMARKS = ("memory_norm", "learned")


class V1Memories:
    """v1's memory state: lists of M_i [H, d, d] and z_i [H, d] (zero at reset) and a write pointer."""

    def __init__(self, num_memories: int, heads: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        self.num_memories, self.heads, self.head_dim = num_memories, heads, head_dim
        self.device, self.dtype = torch.device(device or "cpu"), dtype
        self.reset()

    def reset(self) -> None:
        H, d, f = self.heads, self.head_dim, dict(device=self.device, dtype=self.dtype)
        self.M = [torch.zeros(H, d, d, **f) for _ in range(self.num_memories)]
        self.z = [torch.zeros(H, d, **f) for _ in range(self.num_memories)]
        self.pointer = 0


def check_v1(cfg: ModelConfig) -> None:
    """Raise ValueError unless `cfg` is a v1 configuration this reference computes."""
    m = cfg.memory
    off = [f"model.memory.{k}={getattr(m, k)!r}" for k, allowed in MEMORY_SWITCHES.items()
           if getattr(m, k) != allowed[0] and k not in ("encoder_keys", "write")]  # write: simple or delta
    if m.landmark not in V1_LANDMARKS:
        off.append(f"model.memory.landmark={m.landmark!r} (allowed: {', '.join(V1_LANDMARKS)})")
    if m.top_k:
        off.append(f"model.memory.top_k={m.top_k}")
    if cfg.layernorm != "shared":
        off.append(f"model.layernorm={cfg.layernorm!r}")
    if off:
        raise ValueError("the v1 reference layer computes v1 switches only; got " + ", ".join(off))


class LearnedLandmarkV1(nn.Module):
    """W_l: one d×d matrix shared by heads and memories (same name as landmarks.LearnedLandmark)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d, d, bias=False)


class ReferenceMultiMemoryAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        check_v1(cfg)
        D, H = cfg.hidden, cfg.heads
        self.H, self.d, self.eps, self.kind = H, cfg.head_dim, cfg.memory.eps, cfg.memory.landmark
        self.delta = cfg.memory.write == "delta"
        self.q_proj = nn.Linear(D, D, bias=False)
        self.k_proj = nn.Linear(D, D, bias=False)
        self.v_proj = nn.Linear(D, D, bias=False)
        self.o_proj = nn.Linear(D, D, bias=False)
        self.gate = nn.Parameter(torch.zeros(H))
        self.landmark = LearnedLandmarkV1(self.d) if self.kind == "learned" else None

    def forward(self, h: torch.Tensor, mem: V1Memories | None, update_memory: bool = False,
                mixer: str | None = None, oracle_slot: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if mixer is not None or oracle_slot is not None:
            raise ValueError("the v1 reference layer mixes with its landmark only (mixer=None)")
        B, S, D = h.shape
        q, k, v = (p(h).view(B, S, self.H, self.d).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        sq, sk = feature_map(q), feature_map(k)  # [B, H, S, d]
        local = causal_linear_attention_running_sum(sq, sk, v, eps=self.eps)  # [B, H, S, d]
        g = torch.sigmoid(self.gate).view(1, self.H, 1, 1)
        w = None
        if mem is None:
            o = (1 - g) * local
        else:
            reads, scores = [], []
            for M, z in zip(mem.M, mem.z):  # one memory at a time
                if z.sum() < 1e-6:  # v1: an empty memory reads 0, scores 0, its landmark is not evaluated
                    reads.append(torch.zeros_like(v))
                    scores.append(sq.new_zeros(B, self.H))
                    continue
                reads.append((sq @ M) / (sq @ z.unsqueeze(-1)).clamp_min(self.eps))  # [B, H, S, d]
                ell = z if self.landmark is None else self.landmark.proj(z)  # [H, d]
                scores.append((sq @ ell.unsqueeze(-1)).squeeze(-1).mean(-1))  # [B, H] mean over t
            w = torch.softmax(torch.stack(scores, -1), dim=-1)  # [B, H, N]
            mixed = sum(w[:, :, None, i, None] * a for i, a in enumerate(reads))  # [B, H, S, d]
            o = g * mixed + (1 - g) * local
            w = w[:, :, None, :].expand(B, self.H, S, mem.num_memories)
        if update_memory and mem is not None:  # write after the read, detached, round-robin
            with torch.no_grad():
                j = mem.pointer
                if self.delta:  # v1's delta rule: write what memory j cannot yet retrieve
                    retrieved = torch.einsum("bhsd,hde->bhse", sk, mem.M[j])
                    norm = torch.einsum("bhsd,hd->bhs", sk, mem.z[j]).clamp_min(self.eps).unsqueeze(-1)
                    v = v - retrieved / norm
                mem.M[j] = mem.M[j] + torch.einsum("bhsd,bhse->hde", sk, v) / (B * S)
                mem.z[j] = mem.z[j] + sk.sum((0, 2)) / B
                mem.pointer = (j + 1) % mem.num_memories
        return self.o_proj(o.transpose(1, 2).reshape(B, S, D)), w


class ReferenceMultiMemoryLayer(nn.Module):
    """x + W_o O + MLP(LN x) with v1's computation; parameter names of MultiMemoryLayer."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.attention = ReferenceMultiMemoryAttention(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, mem: V1Memories | None = None, update_memory: bool = False,
                mixer: str | None = None, oracle_slot: torch.Tensor | None = None) -> MemoryReadout:
        h = self.input_layernorm(x)
        attn, w = self.attention(h, mem, update_memory, mixer, oracle_slot)
        return MemoryReadout(x + attn + self.mlp(h), w)


def use_reference_layer(model: TransformerLM) -> TransformerLM:
    """Replace the memory layer of `model` (in place) by the v1 reference, same weights; returns it.
    Give it `new_v1_memories(model)` as `bank`."""
    i = model.cfg.memory_layer
    if i is None:
        raise ValueError("this model has no memory layer (model.memory_layer is None)")
    old = model.layers[i]
    p = next(old.parameters())
    ref = ReferenceMultiMemoryLayer(model.cfg).to(device=p.device, dtype=p.dtype)
    ref.load_state_dict(old.state_dict())
    model.layers[i] = ref
    return model


def new_v1_memories(model: TransformerLM) -> V1Memories:
    """Empty v1 memories for `model`, on its parameters' device and dtype."""
    w = model.embed_in.weight
    c = model.cfg
    return V1Memories(c.memory.num_memories, c.heads, c.head_dim, w.device, w.dtype)
