"""Selection accuracy, the v1 side experiment at scale (seed-v1.md §1, "Selection-accuracy side experiment").

builder.npz (stage build_memories):
    slot_tokens  int32 [N, builder_tokens]  domain text; slot_tokens[i] is written to memory slot i
    slot_domain  int16 [N]                  domain id held by slot i
    queries      int32 [Q, query_len]       held-out queries (test documents)
    query_domain int16 [Q]

The memory builder writes slot_tokens[i] to slot i with `model.write_memory` (batch 1: a shared bank,
or a per-example bank of one example). Each query is scored against every slot with
`model.memory_scores` -> [Q, N]. A per-example bank of one example is scored as it is, broadcast over
the query batch: the same scores as its `bank.repeat(Q)` copy (tested), without recomputing the
landmark once per query (hsa_encoder's encoder would run Q times). Each query's label is the slot holding its
domain; `multimem.evaluation.selection_metrics.selection_report` turns scores and labels into top-k accuracy
with exact Clopper–Pearson intervals against chance 1/N, per-domain accuracy and a confusion matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from multimem.model.memory_bank import MemoryBank
from multimem.model.transformer import TransformerLM
from multimem.evaluation.selection_metrics import selection_report
from multimem.training.batches import DataFormatError

QUERY_BATCH = 128  # queries scored per forward pass


@dataclass(frozen=True)
class Builder:
    """The arrays of builder.npz (module docstring)."""

    slot_tokens: np.ndarray  # [N, L]
    slot_domain: np.ndarray  # [N]
    queries: np.ndarray  # [Q, Lq]
    query_domain: np.ndarray  # [Q]

    @classmethod
    def load(cls, path: Path | str) -> "Builder":
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("slot_tokens", "slot_domain", "queries", "query_domain") if k not in z.files]
            if missing:
                raise DataFormatError(f"{path}: missing arrays {missing}; rerun stage build_memories")
            b = cls(z["slot_tokens"], z["slot_domain"].astype(np.int64), z["queries"],
                    z["query_domain"].astype(np.int64))
        if b.slot_tokens.ndim != 2 or b.queries.ndim != 2 or b.slot_domain.shape != (len(b.slot_tokens),) \
                or b.query_domain.shape != (len(b.queries),):
            raise DataFormatError(f"{path}: shapes slot_tokens {b.slot_tokens.shape}, slot_domain "
                                  f"{b.slot_domain.shape}, queries {b.queries.shape}, query_domain "
                                  f"{b.query_domain.shape} do not fit [N, L], [N], [Q, Lq], [Q]")
        return b

    def labels(self) -> np.ndarray:
        """[Q] the slot whose domain is each query's domain."""
        slot_of = {int(d): i for i, d in enumerate(self.slot_domain)}
        unknown = sorted(set(self.query_domain.tolist()) - set(slot_of))
        if unknown:
            raise DataFormatError(f"builder.npz: query domains {unknown} are held by no slot")
        return np.array([slot_of[int(d)] for d in self.query_domain], dtype=np.int64)


@torch.no_grad()
def builder_bank(model: TransformerLM, slot_tokens: np.ndarray, device: torch.device) -> MemoryBank:
    """Memories written by the builder: slot_tokens[i] [L] -> slot i (batch 1; shared or B=1 bank)."""
    n = len(slot_tokens)
    if n > model.cfg.memory.num_memories:
        raise DataFormatError(f"builder.npz has {n} slots but model.memory.num_memories="
                         f"{model.cfg.memory.num_memories}; rerun build_memories")
    bank = model.new_bank(None if model.cfg.memory.state == "shared" else 1, device)
    tokens = torch.from_numpy(slot_tokens.astype(np.int64)).to(device)  # [N, L]
    for i in range(n):
        model.write_memory(tokens[i : i + 1], bank, slot=i)
    return bank


@torch.no_grad()
def query_scores(model: TransformerLM, bank: MemoryBank, queries: np.ndarray, n_slots: int,
                 device: torch.device, desc: str = "queries") -> torch.Tensor:
    """Landmark scores [Q, n_slots] (CPU float32) of each query against the first n_slots memories of
    `bank` (shared, or per-example with one example, broadcast over the queries)."""
    if bank.batch_size not in (None, 1):
        raise ValueError(f"query_scores needs a shared bank or one of batch size 1, not {bank.batch_size}")
    model.eval()
    out = []
    for start in tqdm(range(0, len(queries), QUERY_BATCH), desc=desc, leave=False, disable=None):
        q = torch.from_numpy(queries[start : start + QUERY_BATCH].astype(np.int64)).to(device)  # [b, Lq]
        out.append(model.memory_scores(q, bank)[:, :n_slots].float().cpu())  # [b, n_slots]
    return torch.cat(out)


def selection_accuracy(model: TransformerLM, builder: Builder, domain_names: Sequence[str],
                       top_k: Sequence[int], confidence: float, seed: int, device: torch.device,
                       desc: str = "selection") -> dict[str, Any]:
    """selection_report of `model` on the builder's memories and queries; domain_names[d] names domain
    id d (domains.json). Keys as selection_report: top{k}, per_domain, confusion (slot domains)."""
    if model.memory_layer is None or model.memory_layer.attention.landmark is None:
        raise ValueError(f"landmark {model.cfg.memory.landmark!r} has no landmark scores")
    n = len(builder.slot_tokens)
    bank = builder_bank(model, builder.slot_tokens, device)
    scores = query_scores(model, bank, builder.queries, n, device, desc)  # [Q, N]
    names = [domain_names[int(d)] for d in builder.slot_domain]
    return selection_report(scores, builder.labels(), names, top_k, confidence, None, seed)
