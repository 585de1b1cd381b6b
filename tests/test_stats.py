"""Exact binomial intervals and Student-t intervals over seeds (multimem.evaluation.stats)."""
import numpy as np
import pytest

from multimem.evaluation.stats import binomial_p_value, clopper_pearson, paired_difference, summarize, t_interval


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


def test_t_interval_matches_the_textbook_formula_and_degenerates():
    x = [1.0, 2.0, 3.0, 6.0]
    iv = t_interval(x, 0.95)
    half = 3.182446305 * np.std(x, ddof=1) / 2.0  # t_{3, 0.975} * s / sqrt(4)
    assert iv.mean == 3.0 and iv.n == 4
    assert iv.lo == pytest.approx(3.0 - half) and iv.hi == pytest.approx(3.0 + half)
    assert t_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0, 3)  # zero spread: degenerate, no evidence
    one = t_interval([3.5])
    assert one.mean == 3.5 and np.isnan(one.lo) and np.isnan(one.hi) and one.n == 1
    with pytest.raises(ValueError):
        t_interval([])
    with pytest.raises(ValueError):
        t_interval([1.0, float("nan")])
    with pytest.raises(ValueError):
        t_interval([1.0, 2.0], confidence=1.0)


def test_t_interval_is_wider_than_a_bootstrap_at_three_seeds():
    """The 3-seed bootstrap this replaces was narrow: t_{2} = 4.30 against roughly z = 1.96."""
    iv = t_interval([1.0, 2.0, 3.0])
    assert iv.hi - iv.lo == pytest.approx(2 * 4.302652730 * 1.0 / np.sqrt(3))


def test_summarize():
    s = summarize([1.0, 2.0, 3.0, 6.0])
    assert s["mean"] == 3.0 and s["n"] == 4
    assert s["std"] == pytest.approx(np.std([1, 2, 3, 6], ddof=1))
    assert s["ci_lo"] < 3.0 < s["ci_hi"]
    one = summarize([7.0])
    assert one["mean"] == 7.0 and one["n"] == 1 and all(np.isnan(one[k]) for k in ("std", "ci_lo", "ci_hi"))


def test_paired_difference_detects_consistent_shift():
    rng = np.random.default_rng(0)
    base = rng.normal(100.0, 5.0, size=8)  # large between-seed spread
    shifted = base - 2.0 + rng.normal(0.0, 0.3, size=8)  # small consistent improvement
    d = paired_difference(shifted, base)
    assert d["significant"] and d["ci_hi"] < 0.0 and d["n"] == 8 and d["p"] < 1e-6
    assert d["mean_diff"] == pytest.approx(-2.0, abs=0.5)


def test_paired_difference_does_not_flag_noise():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.0, 1.0, size=(2, 10))
    d = paired_difference(a, b)
    assert not d["significant"] and d["ci_lo"] < 0.0 < d["ci_hi"] and d["p"] > 0.05


def test_paired_difference_single_pair_or_zero_spread_never_significant():
    one = paired_difference([2.0], [1.0])
    assert one["significant"] is False and np.isnan(one["p"]) and np.isnan(one["ci_lo"])
    flat = paired_difference([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])  # the same +0.5 on every seed
    assert flat["significant"] is False and np.isnan(flat["p"]) and flat["ci_lo"] == flat["ci_hi"] == 0.5
    with pytest.raises(ValueError, match="equal length"):
        paired_difference([1.0, 2.0], [1.0])
