"""TransformerLM: embeddings, a list of layers (one of them a MultiMemoryLayer), final LayerNorm,
untied LM head — GPT-NeoX's shape and parameter names (`embed_in`, `layers`, `final_layer_norm`,
`embed_out`).

    logits = embed_out(final_layer_norm(layers(embed_in(ids))))      ids [B, S] -> logits [B, S, V]
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .memory_bank import MemoryBank
from .multimem_layer import MultiMemoryLayer
from .pythia_layer import PythiaLayer


class LMOutput(NamedTuple):
    logits: torch.Tensor | None  # [B, S, V]; None when labels were given (loss_sum instead)
    mix_weights: torch.Tensor | None  # [B, H, S, N] landmark mixing weights of the memory layer
    gate: torch.Tensor | None  # [H] sigmoid(γ): share of the memory readout per head
    loss_sum: torch.Tensor | None = None  # Σ cross-entropy over tokens (float32, float64 for a float64 model)

LOSS_CHUNK = 512  # tokens per chunk of the LM head when the loss is computed without full logits


class TransformerLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_in = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.layers = nn.ModuleList(
            MultiMemoryLayer(cfg) if i == cfg.memory_layer else PythiaLayer(cfg) for i in range(cfg.layers)
        )
        self.final_layer_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.embed_out = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """GPT-NeoX initialisation: N(0, 0.02) weights, zero biases."""
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    @property
    def memory_layer(self) -> MultiMemoryLayer | None:
        i = self.cfg.memory_layer
        return None if i is None else self.layers[i]  # type: ignore[return-value]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_bank(self, batch_size: int | None = None, device: torch.device | str | None = None) -> MemoryBank:
        """An empty bank; `batch_size` None for a bank shared by the batch (state: shared)."""
        m = self.cfg.memory
        if self.memory_layer is None:
            raise ValueError("this model has no memory layer (model.memory_layer is None)")
        if (batch_size is None) != (m.state == "shared"):
            raise ValueError(f"model.memory.state={m.state!r}: batch_size must be "
                             f"{'None' if m.state == 'shared' else 'given'}")
        cap = m.encoder_capacity if m.landmark == "hsa_encoder" else 0
        w = self.embed_in.weight  # the bank follows the parameters' device and dtype (float32 under autocast)
        return MemoryBank(m.num_memories, self.cfg.heads, self.cfg.head_dim, batch_size, cap, device or w.device, w.dtype)

    def _run(self, x: torch.Tensor, layers: range) -> torch.Tensor:
        for i in layers:
            x = self.layers[i](x)
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        bank: MemoryBank | None = None,
        update_memory: bool = False,
        mixer: str | None = None,
        oracle_slot: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> LMOutput:
        """input_ids [B, S]; `mixer` overrides the landmark ("oracle", "uniform", "none").
        With labels [B, S] the output carries loss_sum instead of logits (see `head_loss_sum`)."""
        x = self.embed_in(input_ids)  # [B, S, D]
        w = gate = None
        for i, layer in enumerate(self.layers):
            if i == self.cfg.memory_layer:
                x, w = layer(x, bank, update_memory, mixer, oracle_slot)
                gate = torch.sigmoid(layer.attention.gate)
            else:
                x = layer(x)
        if labels is not None:
            return LMOutput(None, w, gate, self.head_loss_sum(x, labels))
        return LMOutput(self.embed_out(self.final_layer_norm(x)), w, gate)

    def _chunk_loss(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.embed_out(self.final_layer_norm(h))  # [T, V]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 up to float32; float64 kept
        return F.cross_entropy(logits, labels, reduction="sum")

    def head_loss_sum(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Σ cross-entropy of the LM head on x [B, S, D] against labels [B, S], LOSS_CHUNK tokens at a
        time with each chunk's logits recomputed in the backward pass: the [B, S, V] logits (412 MB for
        v1's 70M model at B8 S256) are never held, only one chunk's."""
        h, y = x.reshape(-1, x.shape[-1]), labels.reshape(-1)  # [T, D], [T]
        if not torch.is_grad_enabled():
            return self._chunk_loss(h, y)
        total = h.new_zeros((), dtype=torch.promote_types(h.dtype, torch.float32))
        for i in range(0, y.numel(), LOSS_CHUNK):
            total = total + checkpoint(self._chunk_loss, h[i : i + LOSS_CHUNK], y[i : i + LOSS_CHUNK],
                                       use_reentrant=False)
        return total

    def _memory_input(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.memory_layer is None:
            raise ValueError("this model has no memory layer (model.memory_layer is None)")
        return self._run(self.embed_in(input_ids), range(self.cfg.memory_layer))  # [B, L, D]

    def write_memory(
        self, input_ids: torch.Tensor, bank: MemoryBank, slot: int | torch.Tensor, detach: bool = True
    ) -> None:
        """Write the segment input_ids [B, L] to memory `slot` (int, or LongTensor [B])."""
        if detach:
            with torch.no_grad():
                self.memory_layer.write(self._memory_input(input_ids), bank, slot)
            bank.detach()
        else:
            self.memory_layer.write(self._memory_input(input_ids), bank, slot)

    def write_memories(self, context: torch.Tensor, bank: MemoryBank, detach: bool = True) -> None:
        """Write context [B, N, L]: segment n to memory slot n, every slot in one pass (the same
        result as N calls of write_memory, at the cost of one)."""
        B, N, L = context.shape
        if N != bank.num_memories:
            raise ValueError(f"context has {N} segments for {bank.num_memories} memory slots")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
            x = self._memory_input(context.reshape(B * N, L))  # [B·N, L, D]
            self.memory_layer.write(x.view(B, N, L, -1), bank, None)
        if detach:
            bank.detach()

    def memory_scores(self, input_ids: torch.Tensor, bank: MemoryBank) -> torch.Tensor:
        """Landmark relevance of each memory to input_ids [B, S]: [B, N] (mean over heads, tokens);
        empty memories score -inf when model.memory.empty is masked."""
        layer = self.memory_layer
        h = layer.input_layernorm(self._memory_input(input_ids))
        q, _, _ = layer.attention.qkv(h)
        return layer.attention.scores(h, q, bank).mean(dim=(1, 2))  # [B, N]
