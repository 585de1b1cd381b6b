"""Selection statistics and the recovered fraction (issue 12, multimem.evaluation.stats).

Balanced accuracy and chance from class sizes, the cluster bootstrap over queries answered by several
seeds, the permutation null, collapse diagnostics; (landmark - none) / (oracle - none) only when the
bracket is open.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from multimem.evaluation.stats import (
    balanced_accuracy, choice_collapse, clopper_pearson, recovered_fraction, recovered_fraction_frame,
    selection_arrays, selection_chance, selection_stats,
)

SIZES = [86] + [100] * 10  # issue 12: Mathematics 86 queries, the other ten domains 100 each


def _truth(sizes=SIZES) -> np.ndarray:
    return np.repeat(np.arange(len(sizes)), sizes)  # [Q]


@pytest.mark.parametrize("slot", [0, 3])
def test_constant_predictor_balanced_accuracy_is_one_over_k(slot):
    y = _truth()
    const = np.full(y.size, slot)
    assert balanced_accuracy(y, const) == pytest.approx(1 / 11, abs=1e-15)
    assert balanced_accuracy(y, np.stack([const] * 3)) == pytest.approx(1 / 11, abs=1e-15)
    chance = selection_chance(y)
    assert chance["acc"] == pytest.approx(100 / 1086) and round(100 * chance["acc"], 2) == 9.21  # not 1/11
    assert chance["balanced"] == 1 / 11 and chance["n_classes"] == 11


def test_balanced_accuracy_is_mean_per_class_recall():
    rng = np.random.default_rng(0)
    y = _truth([30, 50, 20])
    p = np.where(rng.random((2, y.size)) < 0.5, y, rng.integers(0, 3, (2, y.size)))  # [S=2, Q]
    recall = [np.mean(p[:, y == c] == c) for c in range(3)]
    assert balanced_accuracy(y, p) == pytest.approx(np.mean(recall))
    assert balanced_accuracy(y, y) == 1.0
    # classes absent from the truths do not count; predictions of them are simply wrong
    assert balanced_accuracy(np.array([0, 0, 2, 2]), np.array([0, 0, 2, 5])) == pytest.approx(0.75)


def test_collapse_diagnostics():
    uniform = np.tile(np.arange(8), 10)
    c = choice_collapse(uniform, 8)
    assert c["top_share"] == pytest.approx(1 / 8) and c["entropy_norm"] == pytest.approx(1.0)
    assert c["entropy_nats"] == pytest.approx(np.log(8))
    c = choice_collapse(np.full((3, 40), 5), 8)
    assert c["top_share"] == 1.0 and c["entropy_nats"] == 0.0 and c["entropy_norm"] == 0.0
    with pytest.raises(ValueError):
        choice_collapse(np.array([0, 8]), 8)


def test_collapsed_predictor_is_not_above_chance():
    y = _truth()
    r = selection_stats(y, np.zeros((3, y.size), dtype=int), n_slots=11, n_resamples=300)
    assert r["balanced_acc"] == pytest.approx(1 / 11) and r["balanced_p"] == 1.0 and r["acc_p"] == 1.0
    assert r["top_share"] == 1.0 and r["entropy_norm"] == 0.0
    assert r["balanced_ci_lo"] == r["balanced_ci_hi"] == pytest.approx(1 / 11)  # degenerate: every resample 1/K


def test_informative_predictions_beat_the_permutation_null():
    rng = np.random.default_rng(1)
    y = _truth([60, 60, 60, 60])
    p = np.where(rng.random((3, y.size)) < 0.25, y, rng.integers(0, 4, (3, y.size)))  # ~44% vs 25%
    r = selection_stats(y, p, n_resamples=500)
    assert r["acc_p"] < 0.01 and r["balanced_p"] < 0.01
    assert r["balanced_ci_lo"] > r["balanced_chance"] and r["acc_ci_lo"] < r["acc"] < r["acc_ci_hi"]
    assert r["n_queries"] == 240 and r["n_seeds"] == 3 and r["n_classes"] == 4
    assert selection_stats(y, p, n_resamples=500) == r  # seeded


def test_permutation_null_keeps_its_level():
    """Predictions independent of the truths (seeds agree on a query's wrong answer half of the time)."""
    rng = np.random.default_rng(2)
    y = _truth([40, 30, 30, 20])
    ps = []
    for i in range(300):
        shared = rng.integers(0, 4, y.size)
        p = np.where(rng.random((3, y.size)) < 0.5, shared, rng.integers(0, 4, (3, y.size)))
        ps.append(selection_stats(y, p, n_resamples=199, seed=i)["balanced_p"])
    rate = float(np.mean(np.array(ps) < 0.05))
    print(f"\nselection permutation null: {rate:.3f} of 300 null experiments p < 0.05")
    assert rate <= 0.09


def test_cluster_bootstrap_does_not_shrink_with_copies_of_the_same_answers():
    """Seed-independent models answer the same queries identically: 3 copies carry one seed's evidence."""
    rng = np.random.default_rng(3)
    y = _truth([50, 50, 50])
    p1 = np.where(rng.random(y.size) < 0.4, y, rng.integers(0, 3, y.size))
    one = selection_stats(y, p1[None], n_resamples=400)
    three = selection_stats(y, np.stack([p1] * 3), n_resamples=400)
    for k in ("acc", "acc_ci_lo", "acc_ci_hi", "balanced_ci_lo", "balanced_ci_hi"):
        assert three[k] == pytest.approx(one[k]), k
    naive_lo, naive_hi = clopper_pearson(int(3 * (p1 == y).sum()), 3 * y.size)  # 3 x 150 "independent" answers
    assert naive_hi - naive_lo < 0.75 * (three["acc_ci_hi"] - three["acc_ci_lo"])


def test_cluster_bootstrap_covers_the_query_population_accuracy():
    """Queries differ in difficulty (hit probability h ~ Beta(2, 3), mean 0.4); 3 seeds answer each query."""
    rng = np.random.default_rng(4)
    y = _truth([40, 40, 40, 40])
    covered = []
    for i in range(150):
        h = rng.beta(2.0, 3.0, y.size)
        hit = rng.random((3, y.size)) < h
        wrong = (y + rng.integers(1, 4, (3, y.size))) % 4
        r = selection_stats(y, np.where(hit, y, wrong), n_resamples=300, seed=i)
        covered.append(r["balanced_ci_lo"] <= 0.4 <= r["balanced_ci_hi"])
    cover = float(np.mean(covered))
    print(f"\ncluster bootstrap coverage of balanced accuracy: {cover:.3f}")
    assert cover >= 0.88


def test_selection_arrays_from_the_frame():
    df = pd.DataFrame({"variant": "learned", "seed": np.repeat([1, 0], 4), "example": np.tile([3, 2, 1, 0], 2),
                       "true_slot": np.tile([0, 1, 1, 2], 2), "chosen_slot": [0, 1, 2, 2, 0, 0, 0, 0],
                       "loss": 1.0, "tokens": 2, "correct": 1.0})
    y, p, seeds = selection_arrays(df, "learned")
    assert seeds == [0, 1] and y.tolist() == [2, 1, 1, 0] and p.tolist() == [[0, 0, 0, 0], [2, 2, 1, 0]]
    bad = df.copy()
    bad.loc[0, "true_slot"] = 2
    with pytest.raises(ValueError, match="true slot"):
        selection_arrays(bad, "learned")
    with pytest.raises(ValueError, match="negative"):
        selection_stats(y, -np.ones((2, 4), dtype=int))


def _bracket(rng, n_seeds, gap, recovered, n=400, seed_sd=0.02):
    """none, oracle = none - gap, landmark = none - recovered * gap, each with its own model noise [S, N]."""
    base = rng.normal(3.0, 1.0, (1, n)) + rng.normal(0.0, 0.05, (n_seeds, 1))
    def model(shift):
        return base + shift + rng.normal(0.0, seed_sd, (n_seeds, 1)) + rng.normal(0.0, 0.3, (n_seeds, n))
    return model(-recovered * gap), model(0.0), model(-gap)


def test_recovered_fraction_only_when_the_bracket_is_open():
    rng = np.random.default_rng(5)
    lm, none, oracle = _bracket(rng, 3, gap=0.5, recovered=0.5)
    r, why = recovered_fraction(lm, none, none.copy())  # oracle no better than none: zero spread
    assert r is None and "bracket closed" in why
    opened = [recovered_fraction(*_bracket(rng, 3, gap=0.0, recovered=0.5))[0] is not None for _ in range(300)]
    print(f"\nbracket opened by chance (no oracle - none gap, 3 seeds): {np.mean(opened):.3f}")
    assert np.mean(opened) <= 0.08  # a 5%-level test of the bracket; 300 draws: 5% + 2.4 standard errors
    lm, none, oracle = _bracket(rng, 5, gap=0.6, recovered=0.4)
    r, why = recovered_fraction(lm, none, oracle)
    assert why == "" and r.n_seeds == 5 and r.n_examples == 400
    assert r.ci_lo < r.fraction < r.ci_hi and r.ci_lo < 0.4 < r.ci_hi
    assert r.fraction == pytest.approx((lm - none).mean() / (oracle - none).mean())
    r1, why1 = recovered_fraction(lm[:1], none[:1], oracle[:1])
    assert r1 is None and "2 seeds" in why1


def test_recovered_fraction_interval_covers():
    rng = np.random.default_rng(6)
    hits = []
    for _ in range(300):
        r, _ = recovered_fraction(*_bracket(rng, 5, gap=0.4, recovered=0.3))
        hits.append(r is not None and r.ci_lo <= 0.3 <= r.ci_hi)
    cover = float(np.mean(hits))
    print(f"\nrecovered fraction (Fieller) coverage, 5 seeds: {cover:.3f}")
    assert cover >= 0.90


def test_recovered_fraction_frame():
    rng = np.random.default_rng(7)
    mats = dict(zip(("learned", "none", "oracle"), _bracket(rng, 3, gap=1.0, recovered=0.5, n=100)))
    df = pd.concat([pd.DataFrame({"variant": v, "seed": np.repeat(np.arange(3), 100),
                                  "example": np.tile(np.arange(100), 3), "loss": x.reshape(-1)})
                    for v, x in mats.items()])
    r, why = recovered_fraction_frame(df, "loss", "learned")
    ref, _ = recovered_fraction(mats["learned"], mats["none"], mats["oracle"])
    assert why == "" and r == ref
