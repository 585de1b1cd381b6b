"""Stage build_memories: memory-task examples (recall or continuation) and memory-builder text + held-out queries -> data/memories/.

Outputs (brief, "Data formats"): selection_{train,val,test}.npz, builder.npz, manifest.json.
Inputs are checked against data/prepared/manifest.json first.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from multimem.atomic import atomic_dir
from multimem.data.documents import Documents
from multimem.data.errors import DataError
from multimem.data.manifest import MANIFEST, write_manifest
from multimem.data.recall import RecallSpec, recall_examples
from multimem.data.splits import SPLITS, split_documents
from multimem.data.tasks import (BUILDER_PADDING, builder_domain_ids, builder_text, documents_of, queries,
                                  selection_examples)
from multimem.integrity import sha256_file, verify_manifest

BUILDER_STREAM, QUERY_STREAM = 3, 4  # rng streams [seed, k]: k = split code for selection, then these


def build_memories(memories: dict, prepared_dir: str | Path, out_dir: str | Path) -> dict:
    """Build data/memories/ (or `out_dir`) from params `memories` and the prepared data; return its manifest."""
    prepared_dir = Path(prepared_dir)
    prepared = verify_manifest(prepared_dir, stage="prepare")
    docs = Documents.load(prepared_dir / "documents.npz")
    domains = json.loads((prepared_dir / "domains.json").read_text(encoding="utf-8"))
    n, seg, tgt, seed = (int(memories[k]) for k in ("num_memories", "segment_len", "target_len", "seed"))
    document_split = "prepared"
    if (docs.split < 0).any():  # shuffled_chunks: the memory tasks still need held-out documents
        data = prepared["params"]["data"]
        docs = dataclasses.replace(docs, split=split_documents(
            docs.domain, float(data["val_fraction"]), float(data["test_fraction"]), int(data["seed"])))
        document_split = "by document, made here as data.split 'documents' would (prepared: shuffled_chunks)"

    present = [code for code in range(len(SPLITS)) if (docs.split == code).any()]
    usable = np.array([d for d in range(len(domains))
                       if all(len(documents_of(docs, code, d, seg + tgt)) for code in present)], dtype=np.int64)
    if not 1 <= n <= len(usable):
        raise DataError(
            f"memories.num_memories={n}; allowed 1..{len(usable)}: the number of domains with a document of "
            f">= segment_len + target_len = {seg + tgt} tokens in every split ({len(domains)} domains in all)")

    task = memories["task"]
    counts = {name: int(memories[f"examples_{name}"]) if code in present else 0 for code, name in enumerate(SPLITS)}
    for code, name in enumerate(SPLITS):  # a split asked for but without documents would score as loss 0
        if code not in present and int(memories[f"examples_{name}"]) > 0:
            fix = "lower data.val_fraction + data.test_fraction" if name == "train" else f"raise data.{name}_fraction"
            raise DataError(f"memories.examples_{name}: {memories[f'examples_{name}']} asked for, but {prepared_dir} "
                            f"has no {name} documents; allowed: data that give every split documents ({fix} or add "
                            "documents, then rerun prepare)")
    if task == "recall":  # synthetic: no corpus needed for the task itself (data/recall.py)
        spec = RecallSpec.from_params(memories)
        selection = {name: recall_examples(spec, counts[name], np.random.default_rng([seed, code]))
                     for code, name in enumerate(SPLITS)}
    else:
        eos = int(prepared["tokenizer"]["eos_id"])
        selection = {name: selection_examples(docs, code, usable, n, seg, tgt, counts[name],
                                              np.random.default_rng([seed, code]), eos)
                     for code, name in enumerate(SPLITS)}
    slot_domain = builder_domain_ids(list(memories["builder_domains"]), domains, usable, n)  # [N] slot i <-> domain
    if memories["builder_padding"] not in BUILDER_PADDING:
        raise DataError(f"memories.builder_padding={memories['builder_padding']!r}; allowed: {', '.join(BUILDER_PADDING)}")
    text_tokens = int(memories["builder_text_tokens"]) if memories["builder_padding"] == "pad_to_builder_tokens" else None
    rng = np.random.default_rng([seed, BUILDER_STREAM])
    eos_id, builder_tokens = int(prepared["tokenizer"]["eos_id"]), int(memories["builder_tokens"])
    slot_tokens = np.stack([builder_text(docs, d, builder_tokens, eos_id, rng, text_tokens)
                            for d in slot_domain.tolist()])  # [N, builder_tokens]
    query_split = 2 if 2 in present else 1
    rng = np.random.default_rng([seed, QUERY_STREAM])
    n_queries, query_len = int(memories["queries_per_domain"]), int(memories["query_len"])
    per_domain = [queries(docs, query_split, d, n_queries, query_len, rng) for d in slot_domain.tolist()]

    with atomic_dir(out_dir) as tmp:
        for name, arrays in selection.items():
            np.savez(tmp / f"selection_{name}.npz", **arrays)
        np.savez(tmp / "builder.npz", slot_tokens=slot_tokens, slot_domain=slot_domain.astype(np.int16),
                 queries=np.concatenate(per_domain),
                 query_domain=np.repeat(slot_domain, [len(q) for q in per_domain]).astype(np.int16))
        return write_manifest(tmp, {
            "stage": "build_memories",
            "prepared_manifest_sha256": sha256_file(prepared_dir / MANIFEST),
            "document_split": document_split,
            "domains": domains,
            "memory_domains": [domains[d] for d in slot_domain.tolist()],
            "selection_domains": [domains[d] for d in usable.tolist()],
            "task": task,
            **({"recall": {"segment_len": spec.segment_len, "target_len": spec.target_len,
                           "scored_per_example": spec.pairs, "chance_accuracy": spec.chance_accuracy,
                           "chance_loss": spec.chance_loss}} if task == "recall" else {}),
            "examples": {name: len(a["true_slot"]) for name, a in selection.items()},
            "true_slot_counts": {name: np.bincount(a["true_slot"], minlength=n).tolist()
                                 for name, a in selection.items()},
            "queries": {"split": SPLITS[query_split],
                        "per_domain": {domains[d]: len(q) for d, q in zip(slot_domain.tolist(), per_domain)},
                        "total": sum(len(q) for q in per_domain)},
            "params": {"memories": memories},
        })
