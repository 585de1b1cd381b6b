"""Stage prepare: corpus -> deduplicated documents -> splits -> tokenizer -> tokens -> LM chunks -> data/prepared/.

Outputs (brief, "Data formats"): tokenizer.json, documents.npz, domains.json, lm_{train,val,test}.npy,
manifest.json. The directory is built beside its destination and renamed into place. LM chunks hold
chunk_len tokens (data.lm_input_len chunk_len_minus_1: chunk_len - 1 inputs) or chunk_len + 1 tokens
(chunk_len, v1: chunk_len inputs and chunk_len labels per sample).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from multimem.atomic import atomic_dir
from multimem.data.documents import Documents
from multimem.data.errors import DataError
from multimem.data.manifest import write_manifest
from multimem.data.sources import load_corpus
from multimem.data.splits import (SPLIT_MODES, SPLITS, check_leakage, document_chunks, first_occurrences,
                                  require_chunks, shuffled_chunks, split_documents, text_hash)
from multimem.data.tokenizer import EOS, PYTHIA, build_tokenizer, encode_documents
from multimem.integrity import sha256_file

LM_INPUT_LENS = ("chunk_len_minus_1", "chunk_len")  # data.lm_input_len (v1 chunk_len)


def prepare(data: dict, out_dir: str | Path) -> dict:
    """Build data/prepared/ (or `out_dir`) from params `data`; return its manifest."""
    mode, seed = data["split"], int(data["seed"])
    if mode not in SPLIT_MODES:
        raise DataError(f"data.split={mode!r}; allowed: {', '.join(SPLIT_MODES)}")
    if data["lm_input_len"] not in LM_INPUT_LENS:
        raise DataError(f"data.lm_input_len={data['lm_input_len']!r}; allowed: {', '.join(LM_INPUT_LENS)}")
    corpus = load_corpus(data)
    hashes = [text_hash(t) for t in corpus.texts]
    unique = first_occurrences(hashes)
    duplicates = len(corpus.texts) - len(unique)
    corpus, hashes = corpus.subset(unique), [hashes[i] for i in unique]

    if mode == "documents":
        split = split_documents(corpus.domain, float(data["val_fraction"]), float(data["test_fraction"]), seed)
        leakage = check_leakage(hashes, split)
    else:
        split = np.full(len(corpus.texts), -1, dtype=np.int8)
    train_texts = [t for t, s in zip(corpus.texts, split.tolist()) if s in (0, -1)]
    tokenizer = build_tokenizer(data["tokenizer"], train_texts, int(data["vocab_size"]))
    trained_on = (PYTHIA if data["tokenizer"] == "pythia" else
                  f"{len(train_texts)} documents ({'train split' if mode == 'documents' else 'all, unsplit'})")
    tokens, offsets = encode_documents(tokenizer, corpus.texts)
    docs = Documents(tokens, offsets, corpus.domain, split)

    chunk_len, max_chunks, eos_id = int(data["chunk_len"]), int(data["max_chunks"]), tokenizer.token_to_id(EOS)
    # tokens stored per chunk: the protocol feeds chunk[:-1] and scores chunk[1:], so chunk_len_minus_1 gives
    # chunk_len - 1 inputs; chunk_len (v1: 5,000 samples of 256 + 1 tokens) cuts chunk_len + 1 for chunk_len inputs
    width = chunk_len + (data["lm_input_len"] == "chunk_len")
    if mode == "documents":
        chunks = document_chunks(tokens, offsets, split, eos_id, width, max_chunks, seed)
    else:
        chunks, leakage = shuffled_chunks(tokens, width, max_chunks, float(data["val_fraction"]), seed)
    require_chunks(chunks, data)
    leakage["duplicate_documents_dropped"] = duplicates

    with atomic_dir(out_dir) as tmp:
        tokenizer.save(str(tmp / "tokenizer.json"))
        docs.save(tmp / "documents.npz")
        (tmp / "domains.json").write_text(json.dumps(corpus.domains, indent=2) + "\n", encoding="utf-8")
        for name, c in chunks.items():
            np.save(tmp / f"lm_{name}.npy", c)
        n_documents, n_tokens = document_counts(docs, corpus.domains)
        manifest = write_manifest(tmp, {
            "stage": "prepare",
            "source": corpus.source,
            "licence": corpus.licence,
            "domains": corpus.domains,
            "split": mode,
            "n_documents": n_documents,
            "n_tokens": n_tokens,
            "chunk_len": chunk_len,
            "lm_input_len": data["lm_input_len"],
            "chunk_tokens": width,  # columns of lm_<split>.npy: inputs chunk[:-1], labels chunk[1:]
            "n_chunks": {name: len(c) for name, c in chunks.items()},
            "tokenizer": {
                "kind": data["tokenizer"], "vocab_size": tokenizer.get_vocab_size(), "eos_token": EOS,
                "eos_id": eos_id, "sha256": sha256_file(tmp / "tokenizer.json"), "trained_on": trained_on,
            },
            "leakage": leakage,
            "params": {"data": data},
        })
    return manifest


def document_counts(docs: Documents, domains: list[str]) -> tuple[dict, dict]:
    """Documents per split and domain {split: {domain: n}} and tokens per split {split: n}; the single split
    "unsplit" when documents are not split (shuffled_chunks)."""
    groups = ({name: docs.split == code for code, name in enumerate(SPLITS)} if (docs.split >= 0).all()
              else {"unsplit": docs.split == -1})
    documents = {name: {d: int((mask & (docs.domain == i)).sum()) for i, d in enumerate(domains)}
                 for name, mask in groups.items()}
    return documents, {name: int(docs.lengths[mask].sum()) for name, mask in groups.items()}
