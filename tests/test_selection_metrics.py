"""Selection accuracy, ties, confusion and mixing-weight diagnostics (multimem.evaluation.selection_metrics)."""
import numpy as np
import pytest
import torch

from multimem.evaluation.selection_metrics import (
    confusion_matrix, mean_max_weight, per_domain_accuracy, predict, selection_report,
    token_top_slot_fraction, topk_accuracy,
)

DOMAINS = ["Arts", "History", "Science", "Sports"]


def _labels(q: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=q)


def test_perfect_scores_give_full_accuracy():
    y = _labels(40, 4)
    scores = np.eye(4)[y] * 5.0 + 1.0  # [40, 4], true slot highest
    assert topk_accuracy(scores, y, 1) == 1.0
    rep = selection_report(scores, y, DOMAINS)
    assert rep["top1"]["acc"] == 1.0 and rep["top1"]["tied"] == 0
    assert rep["top1"]["p_value"] == pytest.approx(0.25 ** 40)
    assert np.array_equal(np.diag(rep["confusion"]), np.bincount(y, minlength=4))


@pytest.mark.parametrize("n,k", [(4, 1), (4, 3), (11, 1), (11, 3)])
def test_constant_scores_give_exactly_chance(n, k):
    y = np.zeros(50, dtype=np.int64)  # all true slots are slot 0: argmax would give 100%
    scores = np.full((50, n), 0.7)
    assert topk_accuracy(scores, y, k) == pytest.approx(k / n, abs=1e-12)
    rep = selection_report(scores, y, [f"d{i}" for i in range(n)], top_k=(k,))
    assert rep[f"top{k}"]["acc"] == pytest.approx(k / n, abs=1e-12)
    assert rep[f"top{k}"]["chance"] == k / n and rep[f"top{k}"]["tied"] == 50


def test_constant_scores_are_not_significant_above_chance():
    y = _labels(400, 8)
    rep = selection_report(torch.zeros(400, 8), torch.from_numpy(y), [f"d{i}" for i in range(8)], seed=1)
    top1 = rep["top1"]
    assert top1["p_value"] > 0.01 and top1["ci_lo"] < 1 / 8 < top1["ci_hi"]
    assert 0 < np.asarray(rep["confusion"])[:, 1:].sum()  # tie-broken predictions spread over slots


def test_partial_ties_counted_fractionally():
    scores = np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 2.0], [0.0, 1.0, 1.0]])
    y = np.array([0, 2, 0])  # tie of 2 -> 1/2, tie of 3 -> 1/3, below two others -> 0
    assert topk_accuracy(scores, y, 1) == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert topk_accuracy(scores, y, 2) == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_topk_monotone_in_k_and_full_at_n():
    rng = np.random.default_rng(0)
    y = _labels(200, 11)
    scores = rng.normal(size=(200, 11)) + 1.5 * np.eye(11)[y]
    accs = [topk_accuracy(scores, y, k) for k in range(1, 12)]
    assert all(a < b for a, b in zip(accs[:-1], accs[1:]))
    assert accs[-1] == 1.0 and 1 / 11 < accs[0] < 1.0


def test_planted_confusion():
    y = np.repeat(np.arange(4), 10)  # [40]
    scores = np.eye(4)[y].copy()
    scores[y == 1] = np.eye(4)[2]  # every History query picks the Science slot
    cm = np.asarray(selection_report(scores, y, DOMAINS)["confusion"])
    expected = np.diag([10, 0, 10, 10])
    expected[1, 2] = 10
    assert np.array_equal(cm, expected)
    per = per_domain_accuracy(scores, y, y, DOMAINS)
    assert per["History"].acc == 0.0 and per["History"].ci_lo == 0.0 and per["Arts"].acc == 1.0
    assert per["Science"] == (10.0, 10, 1.0, pytest.approx(0.025 ** 0.1), 1.0)


def test_confusion_in_domain_space_with_shuffled_slots():
    slot_domain = np.array([[2, 0, 1], [1, 2, 0]])  # [Q, N], domains shuffled over slots per example
    scores = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # both pick slot 2
    y = np.array([2, 1])  # true domains 1 (hit) and 2 (slot 2 holds domain 0: miss)
    rep = selection_report(scores, y, ["a", "b", "c"], top_k=(1,), slot_domain=slot_domain)
    assert rep["top1"]["acc"] == 0.5
    assert rep["confusion"] == [[0, 0, 0], [0, 1, 0], [1, 0, 0]]
    assert set(rep["per_domain"]) == {"b", "c"}


def test_confusion_matrix_and_validation():
    cm = confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2], 3)
    assert cm.dtype == np.int64 and cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError):
        topk_accuracy(np.zeros((3, 2)), np.array([0, 2, 1]))
    with pytest.raises(ValueError):
        topk_accuracy(np.array([[np.nan, 0.0]]), np.array([0]))


def test_report_deterministic_for_a_seed():
    y = _labels(60, 4)
    scores = np.random.default_rng(2).integers(0, 2, size=(60, 4)).astype(float)  # many ties
    assert selection_report(scores, y, DOMAINS, seed=5) == selection_report(scores, y, DOMAINS, seed=5)
    assert np.array_equal(predict(scores, seed=5), predict(scores, seed=5))


def test_token_top_slot_fraction_and_max_weight():
    b, h, s, n = 3, 2, 5, 4
    true_slot = torch.tensor([0, 2, 3])
    onehot = torch.nn.functional.one_hot(true_slot, n).float()[:, None, None, :].expand(b, h, s, n)
    assert token_top_slot_fraction(onehot, true_slot) == 1.0
    assert mean_max_weight(onehot) == 1.0
    uniform = torch.full((b, h, s, n), 1 / n)
    assert token_top_slot_fraction(uniform, true_slot) == pytest.approx(1 / n)
    assert mean_max_weight(uniform) == pytest.approx(1 / n)
    w = np.zeros((1, 2, 2, 3))
    w[0, 0, :, 1] = 1.0  # head 0 favours slot 1 strongly
    w[0, 1, :, 2] = 0.6  # head 1 favours slot 2 weakly
    w[0, 1, :, 1] = 0.4
    assert token_top_slot_fraction(w, np.array([1])) == 1.0  # head average: slot 1 = 0.7
    assert token_top_slot_fraction(w, np.array([2])) == 0.0
