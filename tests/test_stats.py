"""Exact binomial intervals and bootstrap intervals (multimem.evaluation.stats)."""
import numpy as np
import pytest

from multimem.evaluation.stats import binomial_p_value, bootstrap_ci, clopper_pearson, paired_difference, summarize


def test_clopper_pearson_v1_selection_result():
    lo, hi = clopper_pearson(4, 20, 0.95)  # seed-v1.md §3 item 10: [5.7%, 43.7%]
    assert lo == pytest.approx(0.0573, abs=5e-5)
    assert hi == pytest.approx(0.4366, abs=5e-5)


@pytest.mark.parametrize("n", [1, 10, 250])
def test_clopper_pearson_edges(n):
    lo0, hi0 = clopper_pearson(0, n)
    assert lo0 == 0.0 and hi0 == pytest.approx(1 - 0.025 ** (1 / n))  # closed form for k = 0
    lon, hin = clopper_pearson(n, n)
    assert hin == 1.0 and lon == pytest.approx(0.025 ** (1 / n))


def test_clopper_pearson_widens_with_confidence_and_rejects_bad_input():
    lo90, hi90 = clopper_pearson(30, 100, 0.90)
    lo99, hi99 = clopper_pearson(30, 100, 0.99)
    assert lo99 < lo90 < 0.3 < hi90 < hi99
    for args in [(5, 4), (-1, 4), (1, 0), (1.5, 4)]:
        with pytest.raises(ValueError):
            clopper_pearson(*args)
    with pytest.raises(ValueError):
        clopper_pearson(1, 4, confidence=1.0)


def test_binomial_p_value_v1_selection_result():
    assert binomial_p_value(4, 20, 0.25, "less") == pytest.approx(0.4148, abs=1e-4)  # P(X<=4) = 0.41
    assert binomial_p_value(4, 20, 0.25, "greater") == pytest.approx(1 - 0.2252, abs=1e-4)  # P(X>=4)
    assert binomial_p_value(20, 20, 0.25) == pytest.approx(0.25 ** 20)
    with pytest.raises(ValueError, match="alternative"):
        binomial_p_value(4, 20, 0.25, "bigger")


def test_bootstrap_ci_degenerate_inputs():
    assert bootstrap_ci([3.5]) == (3.5, 3.5)
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    lo, hi = bootstrap_ci([1.0, 2.0], n_resamples=200)
    assert 1.0 <= lo < hi <= 2.0
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, float("nan")])


def test_bootstrap_ci_deterministic_for_a_seed():
    x = np.random.default_rng(1).normal(size=12)
    assert bootstrap_ci(x, seed=3, n_resamples=300) == bootstrap_ci(x, seed=3, n_resamples=300)
    assert bootstrap_ci(x, seed=3, n_resamples=300) != bootstrap_ci(x, seed=4, n_resamples=300)


def test_bootstrap_ci_coverage_on_normal_samples():
    rng = np.random.default_rng(0)
    covered = 0
    for i in range(200):
        lo, hi = bootstrap_ci(rng.normal(0.0, 1.0, size=30), 0.95, n_resamples=400, seed=i)
        covered += lo <= 0.0 <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_summarize():
    s = summarize([1.0, 2.0, 3.0, 6.0], n_resamples=300)
    assert s["mean"] == 3.0 and s["n"] == 4
    assert s["std"] == pytest.approx(np.std([1, 2, 3, 6], ddof=1))
    assert s["ci_lo"] < 3.0 < s["ci_hi"]
    assert summarize([7.0]) == {"mean": 7.0, "std": 0.0, "ci_lo": 7.0, "ci_hi": 7.0, "n": 1}


def test_paired_difference_detects_consistent_shift():
    rng = np.random.default_rng(0)
    base = rng.normal(100.0, 5.0, size=8)  # large between-seed spread
    shifted = base - 2.0 + rng.normal(0.0, 0.3, size=8)  # small consistent improvement
    d = paired_difference(shifted, base, n_resamples=500)
    assert d["significant"] and d["ci_hi"] < 0.0 and d["n"] == 8
    assert d["mean_diff"] == pytest.approx(-2.0, abs=0.5)


def test_paired_difference_does_not_flag_noise():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.0, 1.0, size=(2, 10))
    d = paired_difference(a, b, n_resamples=500, seed=0)
    assert not d["significant"] and d["ci_lo"] < 0.0 < d["ci_hi"]


def test_paired_difference_single_pair_never_significant_and_lengths_checked():
    assert paired_difference([2.0], [1.0])["significant"] is False
    with pytest.raises(ValueError, match="equal length"):
        paired_difference([1.0, 2.0], [1.0])
