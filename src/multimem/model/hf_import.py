"""Import GPT-NeoX / Pythia weights from a `transformers` checkpoint (hub id or local folder).

Parameter names of TransformerLM follow GPTNeoXForCausalLM's (`gpt_neox.` prefix dropped), so the
import is a rename plus checks that the architecture is one TransformerLM can express.
`trust_remote_code` is never enabled; weights load through `transformers` (safetensors).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .config import ModelConfig
from .transformer import TransformerLM


class CheckpointError(ValueError):
    """A checkpoint TransformerLM cannot import."""


def _rope(config: Any) -> tuple[float, float]:
    rope = getattr(config, "rope_parameters", None) or {}
    pct = rope.get("partial_rotary_factor", getattr(config, "rotary_pct", 1.0))
    base = rope.get("rope_theta", getattr(config, "rotary_emb_base", 10000.0))
    return float(pct), float(base)


def config_from_hf(config: Any) -> ModelConfig:
    """ModelConfig (all Pythia layers, separate LayerNorms) for a transformers GPTNeoXConfig."""
    if getattr(config, "model_type", None) != "gpt_neox":
        raise CheckpointError(f"pretrain.init: checkpoint model_type is {getattr(config, 'model_type', None)!r}; "
                              "allowed: gpt_neox (Pythia)")
    checks = {"use_parallel_residual": True, "tie_word_embeddings": False, "hidden_act": "gelu"}
    for key, want in checks.items():
        if getattr(config, key, want) != want:
            raise CheckpointError(f"pretrain.init: checkpoint has {key}={getattr(config, key)!r}; supported: {want!r}")
    pct, base = _rope(config)
    return ModelConfig(
        vocab_size=config.vocab_size, hidden=config.hidden_size, layers=config.num_hidden_layers,
        heads=config.num_attention_heads, ffn=config.intermediate_size, rotary_pct=pct, rotary_base=base,
        layernorm="separate", memory_layer=None, layer_norm_eps=config.layer_norm_eps,
    )


def load_gpt_neox(path_or_id: str) -> TransformerLM:
    """TransformerLM (all Pythia layers) with the weights of a GPTNeoXForCausalLM checkpoint."""
    from transformers import AutoConfig, GPTNeoXForCausalLM

    if not os.path.isdir(path_or_id):
        from ..hub import require_hub

        require_hub(f"pretrained weights {path_or_id!r}")
    hf_config = AutoConfig.from_pretrained(path_or_id)
    cfg = config_from_hf(hf_config)
    hf, info = GPTNeoXForCausalLM.from_pretrained(path_or_id, dtype=torch.float32, output_loading_info=True)
    absent = [*info.get("missing_keys", []), *info.get("mismatched_keys", [])]
    if absent:  # transformers would start these from random values with only a warning
        raise CheckpointError(f"checkpoint {path_or_id!r} lacks or mis-shapes {len(absent)} weights, e.g. "
                              f"{sorted(map(str, absent))[:3]}")
    state = {k.removeprefix("gpt_neox."): v for k, v in hf.state_dict().items()}
    if "lm_head.weight" in state:  # transformers >= 5 names Pythia's `embed_out` lm_head
        state["embed_out.weight"] = state.pop("lm_head.weight")
    model = TransformerLM(cfg)
    wanted = model.state_dict().keys()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path_or_id!r} lacks {len(missing)} weights, e.g. {missing[:3]}")
    model.load_state_dict({k: state[k] for k in wanted})
    return model
