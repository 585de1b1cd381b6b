"""Memory tasks from tokenised documents (params `memories`).

Selection example (v2 task): N context segments, one per distinct domain, shuffled over memory slots; the
true slot's segment is the segment_len tokens just before the target in the target's own document, the others
are random windows of documents of their own domains (same split). The model predicts the target, so reading
the right memory lowers the loss.

Memory builder (v1's side experiment at scale): slot i holds builder_tokens tokens of TRAIN text of one
domain; held-out queries of query_len tokens come from TEST documents of the slot domains.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from multimem.data.documents import Documents
from multimem.data.errors import DataError


def documents_of(docs: Documents, split: int, domain: int, min_len: int) -> np.ndarray:
    """Ids of documents of `split` and `domain` with at least min_len tokens, int64 [k]."""
    return np.flatnonzero((docs.split == split) & (docs.domain == domain) & (docs.lengths >= min_len))


def selection_examples(docs: Documents, split: int, domains: np.ndarray, num_memories: int, segment_len: int,
                       target_len: int, n_examples: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`n_examples` selection examples from documents of `split`.

    Each example takes a seeded choice of num_memories domains out of `domains` in a random slot order and a
    uniform true slot. Every domain in `domains` needs a document of >= segment_len + target_len tokens here.
    Returns context int32 [E, N, segment_len], target int32 [E, target_len + 1] (target[:, 0] = last token
    of the true segment), true_slot int64 [E], slot_domain int16 [E, N].
    """
    n = num_memories
    targets = {d: documents_of(docs, split, d, segment_len + target_len) for d in domains.tolist()}
    windows = {d: documents_of(docs, split, d, segment_len) for d in domains.tolist()}
    context = np.zeros((n_examples, n, segment_len), dtype=np.int32)
    target = np.zeros((n_examples, target_len + 1), dtype=np.int32)
    true_slot = rng.integers(n, size=n_examples)  # [E], uniform over slots
    slot_domain = np.zeros((n_examples, n), dtype=np.int16)
    for e in tqdm(range(n_examples), desc="selection", unit="ex", disable=None):
        slot_domain[e] = rng.permutation(domains)[:n]
        for s, d in enumerate(slot_domain[e].tolist()):
            pool = targets[d] if s == true_slot[e] else windows[d]
            doc = docs.doc(pool[rng.integers(len(pool))])
            if s == true_slot[e]:
                p = rng.integers(segment_len, len(doc) - target_len + 1)  # target starts at p
                context[e, s] = doc[p - segment_len:p]
                target[e] = doc[p - 1:p + target_len]
            else:
                a = rng.integers(len(doc) - segment_len + 1)
                context[e, s] = doc[a:a + segment_len]
    return {"context": context, "target": target, "true_slot": true_slot.astype(np.int64),
            "slot_domain": slot_domain}


def builder_text(docs: Documents, domain: int, builder_tokens: int, eos_id: int,
                 rng: np.random.Generator) -> np.ndarray:
    """The first builder_tokens tokens of the domain's TRAIN documents in a seeded order, each followed by EOS,
    int32 [builder_tokens]."""
    parts = [p for j in rng.permutation(documents_of(docs, 0, domain, 1))
             for p in (docs.doc(j), np.array([eos_id], dtype=np.int32))]
    text = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    if len(text) < builder_tokens:
        raise DataError(f"memories.builder_tokens={builder_tokens}, but domain id {domain} has only "
                        f"{len(text)} train tokens; lower memories.builder_tokens")
    return text[:builder_tokens]


def queries(docs: Documents, split: int, domain: int, n_queries: int, query_len: int,
            rng: np.random.Generator) -> np.ndarray:
    """Up to n_queries non-overlapping query_len windows of the domain's documents of `split`, int32 [q, query_len].

    Documents in a seeded order; first every document's first window, then every second window, and so on,
    so queries spread over as many documents as possible.
    """
    order = rng.permutation(documents_of(docs, split, domain, query_len))
    starts = sorted((k, rank, j) for rank, j in enumerate(order.tolist())
                    for k in range(int(docs.lengths[j]) // query_len))[:n_queries]
    out = np.zeros((len(starts), query_len), dtype=np.int32)
    for i, (k, _, j) in enumerate(starts):
        out[i] = docs.doc(j)[k * query_len:(k + 1) * query_len]
    return out
