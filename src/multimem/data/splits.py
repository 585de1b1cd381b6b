"""Train/val/test splits and LM chunks (params `data.split`).

documents        whole documents go to one split (seeded shuffle per domain); each split's documents are
                 joined with EOS and cut into chunk_len chunks. Leak-free, checked by text hash.
shuffled_chunks  v1, faithful: all documents joined WITHOUT separators, cut into contiguous chunks, the
                 first max_chunks shuffled and split (1 - val_fraction) / val_fraction. A val chunk's
                 neighbours are mostly train chunks (seed-v1.md, flaw 7); the leak is measured, not fixed.
"""

from __future__ import annotations

import hashlib
import unicodedata

import numpy as np

from multimem.data.errors import DataError, LeakageError

SPLIT_MODES = ("documents", "shuffled_chunks")
SPLITS = ("train", "val", "test")  # split code = index; -1 = not split by document (shuffled_chunks)


def text_hash(text: str) -> str:
    """sha256 of the normalised text (NFKC, case-folded, whitespace collapsed)."""
    normalised = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


def first_occurrences(hashes: list[str]) -> np.ndarray:
    """Indices (increasing) of the documents whose text hash did not occur earlier."""
    seen: set[str] = set()
    keep = []
    for i, h in enumerate(hashes):
        if h not in seen:
            seen.add(h)
            keep.append(i)
    return np.array(keep, dtype=np.int64)


def split_documents(domain: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Split code int8 [n_docs] (0 train, 1 val, 2 test): per domain, a seeded shuffle, then the first
    round(n * test_fraction) documents go to test, the next round(n * val_fraction) to val."""
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise DataError(f"data.val_fraction={val_fraction}, data.test_fraction={test_fraction}; "
                        "each must be >= 0 and their sum < 1")
    rng = np.random.default_rng(seed)
    split = np.zeros(len(domain), dtype=np.int8)
    for d in np.unique(domain):
        docs = rng.permutation(np.flatnonzero(domain == d))
        n_test, n_val = round(len(docs) * test_fraction), round(len(docs) * val_fraction)
        split[docs[:n_test]] = 2
        split[docs[n_test:n_test + n_val]] = 1
    return split


def check_leakage(hashes: list[str], split: np.ndarray) -> dict:
    """Raise LeakageError if a text hash (text_hash of each document) occurs in two splits; else the check's
    result for the manifest."""
    first_split: dict[str, int] = {}
    leaked: dict[tuple[int, int], int] = {}
    for h, s in zip(hashes, split.tolist()):
        t = first_split.setdefault(h, s)
        if t != s:
            pair = (min(s, t), max(s, t))
            leaked[pair] = leaked.get(pair, 0) + 1
    if leaked:
        counts = ", ".join(f"{n} {SPLITS[a]}/{SPLITS[b]}" for (a, b), n in sorted(leaked.items()))
        raise LeakageError(f"train/val/test leakage: documents with the same normalised text in two splits ({counts})")
    return {"leaky": False, "check": "sha256 of normalised document text, no hash in two splits",
            "documents_in_two_splits": 0}


def lm_chunks(tokens: np.ndarray, offsets: np.ndarray, docs: np.ndarray, eos_id: int, chunk_len: int) -> np.ndarray:
    """Documents `docs` (int [k], in this order) joined with EOS after each, cut into chunks int32 [n, chunk_len]
    (remainder dropped)."""
    parts = [p for d in docs for p in (tokens[offsets[d]:offsets[d + 1]], np.array([eos_id], dtype=np.int32))]
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)  # [T']
    n = len(stream) // chunk_len
    return stream[:n * chunk_len].reshape(n, chunk_len)


def document_chunks(tokens: np.ndarray, offsets: np.ndarray, split: np.ndarray, eos_id: int, chunk_len: int,
                    max_chunks: int, seed: int) -> dict[str, np.ndarray]:
    """LM chunks per split {name: int32 [n_s, chunk_len]}: each split's documents in a seeded order, joined with
    EOS. If max_chunks > 0 and there are more chunks in all, a seeded choice keeps max_chunks in total, each
    split its share (val and test round down, train takes the rest); kept chunks stay in stream order."""
    rng = np.random.default_rng(seed)
    chunks = {name: lm_chunks(tokens, offsets, rng.permutation(np.flatnonzero(split == code)), eos_id, chunk_len)
              for code, name in enumerate(SPLITS)}
    total = sum(len(c) for c in chunks.values())
    if 0 < max_chunks < total:
        keep = {name: len(chunks[name]) * max_chunks // total for name in SPLITS[1:]}
        keep["train"] = max_chunks - sum(keep.values())
        chunks = {name: c[np.sort(rng.choice(len(c), keep[name], replace=False))] for name, c in chunks.items()}
    return chunks


def require_chunks(chunks: dict[str, np.ndarray], data: dict) -> None:
    """DataError unless each split a later stage reads has an LM chunk: train and val, and test when there is a
    test split (an empty split would score as loss 0, perplexity 1)."""
    needed = ["train", "val"] + (["test"] if data["split"] == "documents" and data["test_fraction"] > 0 else [])
    empty = [name for name in needed if len(chunks[name]) == 0]
    if empty:
        counts = ", ".join(f"{name} {len(c)}" for name, c in chunks.items())
        fraction = f"data.{empty[0]}_fraction ({data[f'{empty[0]}_fraction']}), " if empty[0] != "train" else ""
        raise DataError(f"data: the {' and '.join(empty)} split has no LM chunk of data.chunk_len {data['chunk_len']} "
                        f"tokens (chunks: {counts}); allowed: at least 1 per split: lower data.chunk_len, raise "
                        f"{fraction}data.max_chunks ({data['max_chunks']}; 0 = all) or data.max_documents, "
                        "or add documents")


def shuffled_chunks(stream: np.ndarray, chunk_len: int, max_chunks: int, val_fraction: float,
                    seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """v1's split of one token stream int32 [T] (documents joined without separators).

    Chunks c_i = stream[i*L:(i+1)*L] for i < max_chunks (all if 0); a seeded permutation p of them;
    train = c[p[:n_train]], val = c[p[n_train:]] with n_train = n - round(n * val_fraction); test empty.
    Returns the chunks {train, val, test} and the measured leak for the manifest.
    """
    n = len(stream) // chunk_len
    n = min(n, max_chunks) if max_chunks > 0 else n
    all_chunks = stream[:n * chunk_len].reshape(n, chunk_len)  # [n, L], contiguous in stream order
    order = np.random.default_rng(seed).permutation(n)
    n_train = n - round(n * val_fraction)
    in_train = np.zeros(n + 2, dtype=bool)  # padded: in_train[i + 1] is chunk i, chunk -1 and n are absent
    in_train[order[:n_train] + 1] = True
    val = order[n_train:]
    before, after = in_train[val], in_train[val + 2]
    chunks = {"train": all_chunks[order[:n_train]], "val": all_chunks[val],
              "test": np.zeros((0, chunk_len), dtype=np.int32)}
    leakage = {"leaky": True, "check": "contiguous chunks of one stream shuffled across train/val (v1)",
               "val_chunks_preceded_by_train": _fraction(before),
               "val_chunks_with_a_train_neighbour": _fraction(before | after)}
    return chunks, leakage


def _fraction(mask: np.ndarray) -> float:
    return float(mask.mean()) if len(mask) else 0.0
