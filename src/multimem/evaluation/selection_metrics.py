"""Selection accuracy: does the landmark pick the memory slot that holds the query's domain?

Inputs: ``scores`` [Q, N], relevance of query q to memory slot n (e.g. ``model.memory_scores``),
and ``labels`` [Q], the true slot of each query. A query is a hit at k when its true slot is
among the k highest-scored slots.

Ties. argmax would always pick the lowest index among tied slots, so a constant score matrix
would score 100% on queries whose true slot is 0. Instead every tie is broken uniformly at random:
- accuracies (``acc``, ``correct``) are the exact expected values under that rule: with g slots
  scored above the true slot and t slots tied with it (itself included), the hit probability at k
  is clip((k - g) / t, 0, 1). A constant score matrix gives exactly k/N.
- exact binomial inference (Clopper–Pearson CI, p-value against chance) needs integer counts, so it
  uses one seeded random tie-break draw; under "scores carry no information" that count is exactly
  Binomial(Q, k/N), so the test keeps its level. ``tied`` counts the queries whose hit depended on
  a tie; with tied == 0 (usual for real-valued model scores) both views agree.
The confusion matrix uses the same seeded draw for its predictions.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from multimem.evaluation.stats import binomial_p_value, clopper_pearson


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of a numpy array, list or torch tensor (detached, on CPU; bf16/fp16 as float32)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def _check(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _to_numpy(scores).astype(np.float64)  # [Q, N]
    y = _to_numpy(labels)  # [Q]
    if s.ndim != 2 or s.shape[0] < 1 or s.shape[1] < 1:
        raise ValueError(f"scores shape {s.shape}: need [Q, N] with Q, N >= 1")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    if y.shape != (s.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels shape {y.shape} dtype {y.dtype}: need integers [Q={s.shape[0]}]")
    if y.min() < 0 or y.max() >= s.shape[1]:
        raise ValueError(f"labels range [{y.min()}, {y.max()}]: slots are 0..{s.shape[1] - 1}")
    return s, y.astype(np.int64)


def _hits(s: np.ndarray, y: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k hits of checked scores [Q, N] and labels [Q].

    Returns expected hit [Q] (float, random tie-break in expectation), drawn hit [Q] (bool,
    seeded tie-break) and tied [Q] (bool, the hit depended on a tie).
    """
    if k < 1:
        raise ValueError(f"k={k!r}: must be >= 1")
    q = np.arange(s.shape[0])
    s_true = s[q, y][:, None]  # [Q, 1]
    above = (s > s_true).sum(1)  # [Q] slots scored above the true slot
    level = s == s_true  # [Q, N] slots tied with the true slot (itself included)
    expected = np.clip((k - above) / level.sum(1), 0.0, 1.0)  # [Q]
    u = np.random.default_rng(seed).random(s.shape)  # [Q, N] tie-break keys
    rank = above + (level & (u < u[q, y][:, None])).sum(1)  # [Q] 0-based rank in the drawn order
    return expected, rank < k, (expected > 0.0) & (expected < 1.0)


def topk_accuracy(scores: Any, labels: Any, k: int = 1) -> float:
    """Fraction of queries whose true slot is among the k highest scores (ties: expected value)."""
    s, y = _check(scores, labels)
    return float(_hits(s, y, k, seed=0)[0].mean())


def predict(scores: Any, seed: int = 0) -> np.ndarray:
    """Top-1 slot per query [Q] from scores [Q, N], ties broken by a seeded random draw."""
    s = _to_numpy(scores).astype(np.float64)  # [Q, N]
    if s.ndim != 2:
        raise ValueError(f"scores shape {s.shape}: need [Q, N]")
    u = np.random.default_rng(seed).random(s.shape)  # [Q, N]
    return np.lexsort((u, -s), axis=-1)[:, 0].astype(np.int64)


def confusion_matrix(pred: Any, labels: Any, n: int) -> np.ndarray:
    """Counts int64 [n, n]: row = true class, column = predicted class."""
    p, y = _to_numpy(pred).astype(np.int64).reshape(-1), _to_numpy(labels).astype(np.int64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"pred has {p.size} entries, labels {y.size}: need equal length")
    if p.size and (min(p.min(), y.min()) < 0 or max(p.max(), y.max()) >= n):
        raise ValueError(f"class ids must lie in 0..{n - 1}")
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y, p), 1)
    return cm


class DomainAccuracy(NamedTuple):
    """Selection accuracy of one domain's queries (correct: expected count under random tie-break)."""

    correct: float
    total: int
    acc: float
    ci_lo: float
    ci_hi: float


def per_domain_accuracy(
    scores: Any, labels: Any, query_domain: Any, domain_names: Sequence[str],
    k: int = 1, confidence: float = 0.95, seed: int = 0,
) -> dict[str, DomainAccuracy]:
    """Top-k accuracy per query domain; ``query_domain`` [Q] indexes ``domain_names``.

    Clopper–Pearson CIs from the seeded tie-break draw. Domains without queries are omitted.
    """
    s, y = _check(scores, labels)
    dom = _to_numpy(query_domain).astype(np.int64).reshape(-1)  # [Q]
    if dom.shape != y.shape or dom.min() < 0 or dom.max() >= len(domain_names):
        raise ValueError(f"query_domain: need [Q={y.size}] ids in 0..{len(domain_names) - 1}")
    expected, drawn, _ = _hits(s, y, k, seed)
    out: dict[str, DomainAccuracy] = {}
    for d, name in enumerate(domain_names):
        m = dom == d
        if m.any():
            lo, hi = clopper_pearson(int(drawn[m].sum()), int(m.sum()), confidence)
            out[name] = DomainAccuracy(float(expected[m].sum()), int(m.sum()), float(expected[m].mean()), lo, hi)
    return out


def selection_report(
    scores: Any, labels: Any, domain_names: Sequence[str], top_k: Sequence[int] = (1, 3),
    confidence: float = 0.95, slot_domain: Any = None, seed: int = 0,
) -> dict[str, Any]:
    """Selection accuracy with exact CIs against chance, per domain, and a domain confusion matrix.

    slot_domain: None when slot i holds domain i (N == len(domain_names)); else domain id of each
    slot, [N] or per query [Q, N] (the selection task shuffles domains over slots).
    Returns plain JSON-ready types:
      n_queries, n_slots, domain_names,
      top{k}: {acc, correct, n, tied, ci_lo, ci_hi, chance (= min(k, N)/N), p_value (one-sided, > chance)},
      per_domain: {name: {correct, total, acc, ci_lo, ci_hi}} (top-1),
      confusion: [D][D] counts (rows true domain, columns predicted domain, top-1, seeded draw).
    """
    s, y = _check(scores, labels)
    n_q, n_slots = s.shape
    if slot_domain is None:
        if n_slots != len(domain_names):
            raise ValueError(f"slot_domain=None needs N == len(domain_names), got {n_slots} != {len(domain_names)}")
        slot_domain = np.arange(n_slots)
    sd = np.broadcast_to(_to_numpy(slot_domain).astype(np.int64), (n_q, n_slots))  # [Q, N]
    q = np.arange(n_q)
    report: dict[str, Any] = {"n_queries": n_q, "n_slots": n_slots, "domain_names": list(domain_names)}
    for k in top_k:
        expected, drawn, tied = _hits(s, y, k, seed)
        chance = min(k, n_slots) / n_slots
        lo, hi = clopper_pearson(int(drawn.sum()), n_q, confidence)
        report[f"top{k}"] = {
            "acc": float(expected.mean()), "correct": float(expected.sum()), "n": n_q,
            "tied": int(tied.sum()), "ci_lo": lo, "ci_hi": hi, "chance": chance,
            "p_value": binomial_p_value(int(drawn.sum()), n_q, chance, "greater"),
        }
    per_dom = per_domain_accuracy(s, y, sd[q, y], domain_names, 1, confidence, seed)
    report["per_domain"] = {name: r._asdict() for name, r in per_dom.items()}
    pred = predict(s, seed)  # [Q], same draw as the top-1 hits
    report["confusion"] = confusion_matrix(sd[q, pred], sd[q, y], len(domain_names)).tolist()
    return report


def token_top_slot_fraction(mix_weights: Any, true_slot: Any) -> float:
    """Fraction of (example, token) pairs whose head-averaged top memory is the true slot.

    mix_weights [B, H, S, N], true_slot [B]. Ties count 1/(#tied) (expected value of a random
    tie-break), so uniform weights give exactly 1/N.
    """
    w = _to_numpy(mix_weights).astype(np.float64)
    t = _to_numpy(true_slot).astype(np.int64).reshape(-1)
    if w.ndim != 4 or t.shape != (w.shape[0],):
        raise ValueError(f"mix_weights shape {w.shape}, true_slot shape {t.shape}: need [B, H, S, N] and [B]")
    m = w.mean(1)  # [B, S, N]
    top = m == m.max(-1, keepdims=True)  # [B, S, N]
    hit = top[np.arange(m.shape[0]), :, t] / top.sum(-1)  # [B, S]
    return float(hit.mean())


def mean_max_weight(mix_weights: Any) -> float:
    """Mean over (example, head, token) of the largest mixing weight; 1/N uniform, 1 one-hot."""
    w = _to_numpy(mix_weights).astype(np.float64)  # [B, H, S, N]
    return float(w.max(-1).mean())
