"""What a parameter set asks of this machine's memory, checked by the validate stage before any stage
starts: sizes the schema allows (vocab_size up to 1,048,576, hidden up to 65,536, millions of examples)
can still need more memory than there is, and would otherwise fail hours in, with an allocator traceback.

    model      parameters (counted on the meta device, nothing allocated) × 16 bytes: float32 weights,
               gradients and AdamW's two moments, for the largest of train.variants
    examples   selection examples of all splits: context [E, N, segment_len] + target [E, target_len + 1],
               int32
"""

from __future__ import annotations

import os
from typing import Any

BYTES_PER_PARAMETER = 16  # float32 weight, gradient, AdamW exp_avg, exp_avg_sq


def physical_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def model_parameters(params: dict[str, Any]) -> tuple[str, int]:
    """(variant, parameter count) of the largest model of train.variants."""
    import torch

    from multimem.model.config import ModelConfig
    from multimem.model.transformer import TransformerLM

    with torch.device("meta"):
        counts = {v: TransformerLM(ModelConfig.from_params(params["model"], landmark=v)).num_parameters()
                  for v in params["train"]["variants"]}
    return max(counts.items(), key=lambda kv: kv[1])


def memory_problems(params: dict[str, Any], available: int | None = None) -> list[str]:
    """One line per size that does not fit in `available` bytes (default: this machine's memory)."""
    available = physical_memory() if available is None else available
    out = []
    variant, n = model_parameters(params)
    if n * BYTES_PER_PARAMETER > available:
        m = params["model"]
        out.append(f"model.vocab_size {m['vocab_size']}, model.hidden {m['hidden']}, model.layers {m['layers']}, "
                   f"model.ffn {m['ffn']}: the {variant} model has {n:,} parameters, about "
                   f"{_gib(n * BYTES_PER_PARAMETER)} with gradients and AdamW state; this machine has "
                   f"{_gib(available)} of memory; allowed: sizes that fit")
    mem = params["memories"]
    examples = sum(mem[f"examples_{s}"] for s in ("train", "val", "test"))
    need = examples * (mem["num_memories"] * mem["segment_len"] + mem["target_len"] + 1) * 4
    if need > available:
        out.append(f"memories.examples_train/val/test {mem['examples_train']}/{mem['examples_val']}/"
                   f"{mem['examples_test']}: {examples:,} selection examples take about {_gib(need)}; this machine "
                   f"has {_gib(available)} of memory; allowed: fewer examples")
    return out
