"""Model configuration. Defaults reproduce the v1 setting (seed-v1.md §1-2); every v1
protocol choice is a named switch whose other value is the corrected (v2) behaviour."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

LANDMARKS = ("memory_norm", "learned", "hsa_mean", "hsa_encoder")
REFERENCE_MIXERS = ("oracle", "uniform", "none")
MIXERS = LANDMARKS + REFERENCE_MIXERS

# switch name -> allowed values (first = v1 behaviour)
MEMORY_SWITCHES: dict[str, tuple[str, ...]] = {
    "state": ("shared", "per_example"),
    "readout_norm": ("v1", "exact"),
    "relevance": ("sequence_mean", "per_token"),
    "write": ("simple", "delta"),
    "empty": ("zero_score", "masked"),
    "assignment": ("round_robin", "explicit"),
    "landmark_norm": ("sum", "mean"),
    "score_scale": ("none", "sqrt_d"),
    "encoder_keys": ("last_write", "all_writes"),
    "score_centering": ("none", "slots", "project"),
    "score": ("dot", "cosine"),
    "score_temperature": ("fixed", "learned"),
}


@dataclass(frozen=True)
class MemoryConfig:
    """The MultiMemoryLayer's memories and how a landmark mixes them."""

    num_memories: int = 4
    landmark: str = "memory_norm"  # one of MIXERS
    state: str = "shared"  # shared: one bank [N,H,d,d] for the batch (v1); per_example: [B,N,H,d,d]
    readout_norm: str = "v1"  # v1: M/(B*S) but z/B, readout 1/S too small; exact: same normaliser
    relevance: str = "sequence_mean"  # sequence_mean: mean_t over all positions (non-causal); per_token
    write: str = "simple"  # simple: M += σ(K)V^T; delta: V replaced by V - retrieved (delta rule)
    empty: str = "zero_score"  # zero_score: empty memory scores 0 (takes softmax mass); masked: excluded
    assignment: str = "round_robin"  # round_robin: pointer per forward call; explicit: slot per write
    landmark_norm: str = "sum"  # sum: z_i = Σσ(k) grows with writes; mean: divided by tokens written
    score_scale: str = "none"  # none | sqrt_d: relevance divided by √d
    score_centering: str = "none"  # none | slots: ℓ_n − mean over non-empty slots | project: also P = I − ûûᵀ
    score: str = "dot"  # dot | cosine: q' and ℓ' normalised to norm √d before the product (landmarks.py)
    score_temperature: str = "fixed"  # fixed scale (1 or 1/√d) | learned: exp(τ_h), one τ per head (H params)
    top_k: int = 0  # 0: softmax over all memories; k: HSA-style top-k mixing
    encoder_keys: str = "last_write"  # hsa_encoder key buffer: last write only (v1) | all writes
    encoder_capacity: int = 256  # keys kept per slot for hsa_encoder (most recent)
    encoder_layers: int = 2
    encoder_heads: int = 4
    encoder_ffn: int = 256
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.landmark not in MIXERS:
            raise ValueError(f"model.memory.landmark={self.landmark!r}; allowed: {', '.join(MIXERS)}")
        for name, allowed in MEMORY_SWITCHES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"model.memory.{name}={value!r}; allowed: {', '.join(allowed)}")
        if self.num_memories < 1:
            raise ValueError(f"model.memory.num_memories={self.num_memories}; allowed: >= 1")
        if not 0 <= self.top_k <= self.num_memories:
            raise ValueError(
                f"model.memory.top_k={self.top_k}; allowed: 0..num_memories ({self.num_memories})"
            )


@dataclass(frozen=True)
class ModelConfig:
    """A GPT-NeoX-shaped decoder; layer `memory_layer` is a MultiMemoryLayer (None: all Pythia)."""

    vocab_size: int = 50304
    hidden: int = 512
    layers: int = 6
    heads: int = 8
    ffn: int = 2048
    rotary_pct: float = 0.25
    rotary_base: float = 10000.0
    layernorm: str = "shared"  # shared: one LayerNorm for attention and MLP (v1) | separate (GPT-NeoX)
    memory_layer: int | None = 0
    layer_norm_eps: float = 1e-5
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"model.hidden={self.hidden} must be divisible by model.heads={self.heads}")
        if self.layernorm not in ("shared", "separate"):
            raise ValueError(f"model.layernorm={self.layernorm!r}; allowed: shared, separate")
        if self.memory_layer is not None and not 0 <= self.memory_layer < self.layers:
            raise ValueError(f"model.memory_layer={self.memory_layer}; allowed: 0..{self.layers - 1}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def from_params(cls, model: dict[str, Any], landmark: str | None = None) -> "ModelConfig":
        """Build from the `model` section of params.yaml; `landmark` picks the variant."""
        mem = dict(model.get("memory", {}))
        if landmark is not None:
            mem["landmark"] = landmark
        mem.setdefault("num_memories", 4)
        kwargs = {k: v for k, v in model.items() if k != "memory"}
        return cls(memory=MemoryConfig(**mem), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        return cls(memory=MemoryConfig(**d.pop("memory", {})), **d)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)
