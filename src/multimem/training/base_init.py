"""Start a landmark variant from the base LM (models/base, written by the pretrain stage).

Every weight whose name and shape match the base is copied: embeddings, all Pythia layers, the final
LayerNorm, the LM head, and in the memory layer (layer `model.memory_layer`, usually 0) its
LayerNorm(s) and MLP, which carry the same names in MultiMemoryLayer and PythiaLayer.

The memory layer's attention differs, and is initialised from the base layer's attention:
    q_proj, k_proj, v_proj  <- the q, k, v rows of the base's fused `query_key_value` weight, whose
                               output is laid out per head as [H, (q|k|v), d] (GPT-NeoX)
    o_proj                  <- the base's `dense` weight
The base's attention biases are dropped (the memory layer has none), and the copied q, k act without
rotary embeddings (the memory layer applies none) and through σ = ELU+1 linear attention instead of
softmax, so layer 0 starts close to, not equal to, the base layer. What the base lacks stays at the
variant's own (seeded) initialisation: the gate γ = 0 (g = 0.5) and the landmark's parameters.
With `pretrain.init: scratch` the base is a seeded random initialisation, so every variant and seed
starts from the same random weights (v1 started from a random init too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from multimem.model.config import ModelConfig
from multimem.model.transformer import TransformerLM
from multimem.params import UserError

SHAPE_KEYS = ("vocab_size", "hidden", "layers", "heads", "ffn")


class BaseMismatchError(UserError, ValueError):
    """The base LM's shape differs from the variant's `model` parameters."""


@dataclass(frozen=True)
class BaseInit:
    """What `init_from_base` did, by parameter name."""

    copied: list[str]
    from_attention: list[str]
    kept: list[str]


def check_compatible(base: ModelConfig, variant: ModelConfig) -> None:
    for key in SHAPE_KEYS:
        if getattr(base, key) != getattr(variant, key):
            raise BaseMismatchError(
                f"model.{key}={getattr(variant, key)} but the base LM has {key}={getattr(base, key)}; "
                "rerun the pretrain stage or set model.* to the base's shape"
            )


def memory_attention_from_base(
    base_state: dict[str, torch.Tensor], layer: int, cfg: ModelConfig
) -> dict[str, torch.Tensor]:
    """q/k/v/o_proj weights for memory layer `layer` from the base's Pythia attention of that layer."""
    prefix = f"layers.{layer}.attention."
    qkv_key, dense_key = prefix + "query_key_value.weight", prefix + "dense.weight"
    if qkv_key not in base_state or dense_key not in base_state:
        return {}
    H, d, D = cfg.heads, cfg.head_dim, cfg.hidden
    qkv = base_state[qkv_key].view(H, 3, d, D)  # rows: [H, (q|k|v), d], columns D
    out = {prefix + f"{name}_proj.weight": qkv[:, i].reshape(D, D) for i, name in enumerate("qkv")}
    out[prefix + "o_proj.weight"] = base_state[dense_key]
    return out


@torch.no_grad()
def init_from_base(model: TransformerLM, base_state: dict[str, torch.Tensor], base_cfg: ModelConfig) -> BaseInit:
    """Copy the base's weights into `model` in place (see the module docstring)."""
    check_compatible(base_cfg, model.cfg)
    own = model.state_dict()
    source = dict(base_state)
    if model.cfg.memory_layer is not None:
        source.update(memory_attention_from_base(base_state, model.cfg.memory_layer, model.cfg))
    copied, derived, kept = [], [], []
    for name, tensor in own.items():
        src = source.get(name)
        if src is not None and src.shape == tensor.shape:
            tensor.copy_(src.to(tensor.dtype))
            (copied if name in base_state else derived).append(name)
        else:
            kept.append(name)
    return BaseInit(copied, derived, kept)
