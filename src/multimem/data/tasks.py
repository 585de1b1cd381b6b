"""Memory tasks from tokenised documents (params `memories`).

Continuation example (`memories.task: continuation`): N context segments, one per distinct domain, shuffled
over memory slots; the true slot's segment is the segment_len tokens just before the target in the target's
own document, the others are random windows of documents of their own domains (same split). The target starts
with EOS (not with the segment's last token, which would hand the model its first word), and each target
document is used at most once per split (drawn without replacement). The model predicts the target, so
reading the right memory lowers the loss. (The recall task, `memories.task: recall`, is data/recall.py.)

Memory builder (v1's side experiment at scale): slot i holds builder_tokens tokens of TRAIN text of one
domain (memories.builder_domains, or the first num_memories domains alphabetically), all text or (v1,
memories.builder_padding pad_to_builder_tokens) builder_text_tokens of text then EOS padding; held-out queries
of query_len tokens come from TEST documents of the slot domains.
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
                       target_len: int, n_examples: int, rng: np.random.Generator,
                       eos_id: int = 0) -> dict[str, np.ndarray]:
    """`n_examples` selection examples from documents of `split`.

    Each example takes a seeded choice of num_memories domains out of `domains` in a random slot order and a
    uniform true slot. Every domain in `domains` needs a document of >= segment_len + target_len tokens here.
    Returns context int32 [E, N, segment_len], target int32 [E, target_len + 1] (target[:, 0] = eos_id),
    true_slot int64 [E], slot_domain int16 [E, N]. Target documents are drawn without replacement; a domain
    that runs out raises DataError naming memories.examples_<split>.
    """
    n = num_memories
    targets = {d: list(rng.permutation(documents_of(docs, split, d, segment_len + target_len)))
               for d in domains.tolist()}  # target documents not yet used, popped from the end
    windows = {d: documents_of(docs, split, d, segment_len) for d in domains.tolist()}
    context = np.zeros((n_examples, n, segment_len), dtype=np.int32)
    target = np.zeros((n_examples, target_len + 1), dtype=np.int32)
    true_slot = rng.integers(n, size=n_examples)  # [E], uniform over slots
    slot_domain = np.zeros((n_examples, n), dtype=np.int16)
    for e in tqdm(range(n_examples), desc="selection", unit="ex", disable=None):
        slot_domain[e] = rng.permutation(domains)[:n]
        for s, d in enumerate(slot_domain[e].tolist()):
            if s == true_slot[e]:
                if not targets[d]:
                    raise DataError(f"memories.examples_{('train', 'val', 'test')[split]}={n_examples}: domain id "
                                    f"{d} has no unused target document left in this split (each is used once); "
                                    "lower the number of examples or memories.segment_len + target_len")
                doc = docs.doc(targets[d].pop())
                p = rng.integers(segment_len, len(doc) - target_len + 1)  # target starts at p
                context[e, s] = doc[p - segment_len:p]
                target[e, 0] = eos_id
                target[e, 1:] = doc[p:p + target_len]
            else:
                doc = docs.doc(windows[d][rng.integers(len(windows[d]))])
                a = rng.integers(len(doc) - segment_len + 1)
                context[e, s] = doc[a:a + segment_len]
    return {"context": context, "target": target, "true_slot": true_slot.astype(np.int64),
            "slot_domain": slot_domain}


BUILDER_PADDING = ("none", "pad_to_builder_tokens")  # memories.builder_padding (v1 pad_to_builder_tokens)


def builder_text(docs: Documents, domain: int, builder_tokens: int, eos_id: int,
                 rng: np.random.Generator, text_tokens: int | None = None) -> np.ndarray:
    """The first builder_tokens tokens of the domain's TRAIN documents in a seeded order, each followed by EOS,
    int32 [builder_tokens]. With `text_tokens` (memories.builder_padding pad_to_builder_tokens, v1's side
    experiment: ~80 words padded to 256 tokens) only the first text_tokens are text and the rest is EOS padding
    on the right, as v1's MemoryBuilder padded a short text with the tokenizer's EOS id."""
    real = builder_tokens if text_tokens is None else text_tokens
    if not 1 <= real <= builder_tokens:
        raise DataError(f"memories.builder_text_tokens={real}; allowed: 1..memories.builder_tokens ({builder_tokens})")
    parts = [p for j in rng.permutation(documents_of(docs, 0, domain, 1))
             for p in (docs.doc(j), np.array([eos_id], dtype=np.int32))]
    text = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    if len(text) < real:
        key = "builder_tokens" if text_tokens is None else "builder_text_tokens"
        raise DataError(f"memories.{key}={real}, but domain id {domain} has only "
                        f"{len(text)} train tokens; lower memories.{key}")
    out = np.full(builder_tokens, eos_id, dtype=np.int32)
    out[:real] = text[:real]
    return out


def builder_domain_ids(names: list[str], domains: list[str], default: np.ndarray, n: int) -> np.ndarray:
    """Domain ids of the memory builder's slots, int64 [n]: `names` (memories.builder_domains) in slot order,
    or `default` (the first n usable domains, alphabetical) when names is empty."""
    if not names:
        return default[:n]
    if len(names) != n:
        raise DataError(f"memories.builder_domains has {len(names)} names; allowed: none (first "
                        f"memories.num_memories domains) or exactly memories.num_memories ({n})")
    unknown = [d for d in names if d not in domains]
    if unknown:
        raise DataError(f"memories.builder_domains: {', '.join(map(repr, unknown))} not a domain of the prepared "
                        f"corpus; allowed: {', '.join(domains)}")
    return np.array([domains.index(d) for d in names], dtype=np.int64)


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
