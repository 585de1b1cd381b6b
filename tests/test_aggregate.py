"""Aggregation over seeds and per-example results into the flat DVC metrics summary (multimem.evaluation.aggregate)."""
import json

import numpy as np
import pandas as pd
import pytest

from multimem.evaluation.aggregate import (
    SUMMARY_SCHEMA, AggregateError, SummaryError, aggregate_runs, build_summary, comparison_pairs,
    paired_differences, validate_summary,
)
from multimem.evaluation.stats import holm

METRICS = ["test_ppl", "selection_top1"]
KW = dict(confidence=0.95)
BUILD_KW = dict(confidence=0.95, n_resamples=300, seed=0)


def _runs(seeds=range(5)) -> list[dict]:
    rng = np.random.default_rng(0)
    runs = []
    for s in seeds:
        base = 100.0 + rng.normal(0, 5)  # seed effect shared by both variants
        runs.append({"variant": "memory_norm", "seed": s, "test_ppl": base, "selection_top1": 0.09})
        runs.append({"variant": "learned", "seed": s, "test_ppl": base - 3.0 + rng.normal(0, 0.2),
                     "selection_top1": 0.3 + rng.normal(0, 0.02), "split": "test"})
    return runs


def test_aggregate_keys_values_and_rounding():
    runs = _runs()
    out = aggregate_runs(runs, METRICS, **KW)
    stats = ("mean", "std", "ci_lo", "ci_hi", "n")
    assert set(out) == {f"{v}.{m}.{s}" for v in ("learned", "memory_norm") for m in METRICS for s in stats}
    ppl = [r["test_ppl"] for r in runs if r["variant"] == "learned"]
    assert out["learned.test_ppl.mean"] == float(f"{np.mean(ppl):.6g}") != np.mean(ppl)
    assert out["learned.test_ppl.n"] == 5
    assert out["memory_norm.selection_top1.std"] == 0.0
    assert out["memory_norm.selection_top1.ci_lo"] == out["memory_norm.selection_top1.ci_hi"] == 0.09
    assert out["learned.test_ppl.ci_lo"] < out["learned.test_ppl.mean"] < out["learned.test_ppl.ci_hi"]
    half = 2.776445105 * np.std(ppl, ddof=1) / np.sqrt(5)  # Student-t, 4 df
    assert out["learned.test_ppl.ci_hi"] == pytest.approx(np.mean(ppl) + half, rel=1e-5)
    validate_summary(out)


def test_paired_differences_detect_shift_hidden_by_seed_spread():
    out = paired_differences(_runs(), METRICS, baseline="memory_norm", **KW)
    key = "diff.learned-memory_norm.test_ppl"
    assert out[f"{key}.mean_diff"] == pytest.approx(-3.0, abs=0.3)
    assert out[f"{key}.significant"] is True and out[f"{key}.ci_hi"] < 0 and out[f"{key}.n"] == 5
    assert out[f"{key}.p"] <= out[f"{key}.p_holm"] < 0.05  # Holm across the 2 comparisons
    assert out["diff.learned-memory_norm.selection_top1.significant"] is True
    assert not any(k.startswith("diff.memory_norm-") for k in out)


def test_paired_differences_pair_by_seed_and_ignore_noise():
    rng = np.random.default_rng(1)
    runs = [{"variant": v, "seed": s, "test_ppl": 50 + rng.normal()} for v in ("a", "b") for s in range(8)]
    runs.append({"variant": "a", "seed": 99, "test_ppl": 1000.0})  # no partner in b: left out
    out = paired_differences(runs, ["test_ppl"], baseline="b", **KW)
    assert out["diff.a-b.test_ppl.n"] == 8 and out["diff.a-b.test_ppl.significant"] is False


def test_build_summary_is_valid_json_and_deterministic():
    s1 = build_summary(_runs(), METRICS, baseline="memory_norm", **BUILD_KW)
    s2 = build_summary(_runs(), METRICS, "memory_norm", 0.95, 300, 0)  # the evaluate stage's positional call
    assert s1 == s2
    assert json.loads(json.dumps(s1)) == s1
    assert any(k.startswith("diff.") for k in s1) and any(k.startswith("learned.") for k in s1)


def test_missing_metric_skipped_and_single_seed():
    runs = [{"variant": "uniform", "seed": 0, "test_ppl": 80.0, "selection_top1": None}]
    out = aggregate_runs(runs, METRICS, **KW)
    assert out == {"uniform.test_ppl.mean": 80.0, "uniform.test_ppl.n": 1}  # one seed: no spread, no interval


@pytest.mark.parametrize("runs,match", [
    ([{"variant": "a", "seed": 0, "test_ppl": 1.0}, {"variant": "a", "seed": 0, "test_ppl": 2.0}], "duplicate"),
    ([{"variant": "a", "seed": 0, "test_ppl": float("nan")}], "finite"),
    ([{"variant": "a.b", "seed": 0, "test_ppl": 1.0}], "variant"),
    ([{"variant": "diff", "seed": 0, "test_ppl": 1.0}], "variant"),
    ([{"variant": "a", "seed": "0", "test_ppl": 1.0}], "seed"),
])
def test_bad_runs_rejected(runs, match):
    with pytest.raises(AggregateError, match=match):
        aggregate_runs(runs, ["test_ppl"], **KW)


def test_unknown_baseline_rejected():
    with pytest.raises(AggregateError, match="baseline"):
        paired_differences(_runs(), METRICS, baseline="oracle", **KW)


@pytest.mark.parametrize("bad", [
    {"learned.test_ppl.median": 1.0},
    {"learned.test_ppl.n": 0},
    {"learned.test_ppl.mean": "1.0"},
    {"diff.learned-memory_norm.test_ppl.significant": 1},
    {"learned.test_ppl.mean": float("inf")},
    {"learned.test_ppl.ci_lo": 2.0, "learned.test_ppl.ci_hi": 1.0},
    {},
])
def test_validate_summary_rejects(bad):
    with pytest.raises(SummaryError):
        validate_summary(bad)


def test_schema_is_plain_json():
    assert json.loads(json.dumps(SUMMARY_SCHEMA)) == SUMMARY_SCHEMA


def test_zero_spread_over_seeds_is_never_significant():
    """Issue 12: diff.hsa_mean-memory_norm.sel_initial_top1 had CI [0.0405, 0.0405] and significant: true."""
    runs = [{"variant": v, "seed": s, "sel_initial_top1": x} for s in range(3)
            for v, x in (("hsa_mean", 0.1314), ("memory_norm", 0.0909))]
    out = paired_differences(runs, ["sel_initial_top1"], baseline="memory_norm", **KW)
    key = "diff.hsa_mean-memory_norm.sel_initial_top1"
    assert out[f"{key}.significant"] is False and f"{key}.p" not in out and out[f"{key}.n"] == 3


def test_three_seed_difference_within_seed_noise_is_not_significant():
    """Issue 12: hsa_encoder - memory_norm -0.130 over 3 seeds, t-interval [-0.287, +0.027]."""
    d = np.array([-0.130 - 0.0632, -0.130, -0.130 + 0.0632])  # s = 0.0632: t_{2} * s / sqrt(3) = 0.157
    runs = [{"variant": v, "seed": s, "test_ppl": 40.0 + (x if v == "hsa_encoder" else 0.0)}
            for s, x in enumerate(d) for v in ("hsa_encoder", "memory_norm")]
    out = paired_differences(runs, ["test_ppl"], baseline="memory_norm", **KW)
    key = "diff.hsa_encoder-memory_norm.test_ppl"
    assert out[f"{key}.ci_lo"] == pytest.approx(-0.287, abs=2e-3)
    assert out[f"{key}.ci_hi"] == pytest.approx(0.027, abs=2e-3)
    assert out[f"{key}.significant"] is False


def _examples(seeds=(0, 1, 2), n=300, gap=0.8, recovered=0.6, rng=None) -> pd.DataFrame:
    """Per-example frame: none, oracle (loss - gap), uniform, learned (recovers 60%, right slot 60%),
    hsa_mean (like none, slot choice at chance); 4 slots."""
    rng = rng or np.random.default_rng(0)
    difficulty = rng.normal(3.0, 1.0, n)
    true = np.arange(n) % 4
    shift = {"none": 0.0, "oracle": -gap, "uniform": -0.1, "learned": -recovered * gap, "hsa_mean": 0.0}
    frames = []
    for v, sh in shift.items():
        for s in seeds:
            loss = difficulty + sh + rng.normal(0, 0.02) + rng.normal(0, 0.3, n)
            if v == "learned":
                chosen = np.where(rng.random(n) < 0.6, true, rng.integers(0, 4, n))
            elif v == "hsa_mean":
                chosen = rng.integers(0, 4, n)
            else:
                chosen = np.full(n, -1)
            frames.append(pd.DataFrame({"variant": v, "seed": s, "example": np.arange(n), "true_slot": true,
                                        "chosen_slot": chosen, "loss": loss, "tokens": 4,
                                        "correct": (rng.random(n) < 1 / (1 + np.exp(loss - 3))).astype(float)}))
    return pd.concat(frames, ignore_index=True)


def test_comparison_pairs_are_the_reports():
    variants = ["none", "oracle", "uniform", "learned", "hsa_mean"]
    assert comparison_pairs(variants, ["learned", "hsa_mean"]) == [
        ("learned", "none"), ("learned", "oracle"), ("hsa_mean", "none"), ("hsa_mean", "oracle"),
        ("learned", "hsa_mean"), ("oracle", "none")]
    assert comparison_pairs(["learned"], ["learned"]) == []


def test_build_summary_with_per_example_results():
    runs = _runs()
    ex = _examples()
    s = build_summary(runs, METRICS, "memory_norm", examples=ex, **BUILD_KW)
    validate_summary(s)
    assert json.loads(json.dumps(s)) == s
    assert s == build_summary(runs, METRICS, "memory_norm", examples=ex.sample(frac=1.0, random_state=1), **BUILD_KW)
    # per variant, over the 3 seeds' means
    for v in ("none", "oracle", "uniform", "learned", "hsa_mean"):
        for m in ("loss", "correct"):
            assert s[f"{v}.{m}.n"] == 3 and s[f"{v}.{m}.ci_lo"] <= s[f"{v}.{m}.mean"] <= s[f"{v}.{m}.ci_hi"]
    seed_means = ex[ex.variant == "learned"].groupby("seed")["loss"].mean()
    assert s["learned.loss.mean"] == pytest.approx(seed_means.mean(), rel=1e-5)
    # comparisons: the report's pairs x 2 metrics, Holm across all 12
    cmp = sorted({k.rsplit(".", 1)[0] for k in s if k.startswith("cmp.")})
    assert len(cmp) == 12 and "cmp.oracle-none.loss" in cmp and "cmp.learned-hsa_mean.correct" in cmp
    ps = np.array([s.get(f"{c}.p", np.nan) for c in cmp])
    assert np.allclose([s.get(f"{c}.p_holm", np.nan) for c in cmp], holm(ps), rtol=1e-5, equal_nan=True)
    assert s["cmp.oracle-none.loss.significant"] is True
    assert s["cmp.oracle-none.loss.effect"] == pytest.approx(-0.8, abs=0.05)
    assert s["cmp.learned-none.loss.significant"] is True
    assert s["cmp.hsa_mean-none.loss.significant"] is False
    assert s["cmp.learned-none.loss.n_seeds"] == 3 and s["cmp.learned-none.loss.n_examples"] == 300
    # selection: landmarks only
    assert not any(k.startswith(("none.choice", "oracle.choice", "uniform.choice")) for k in s)
    assert s["learned.choice_bal_acc.p"] < 0.01 and s["learned.choice_bal_acc.chance"] == 0.25
    assert s["learned.choice_acc.n"] == 300 and s["learned.choice_acc.n_seeds"] == 3
    assert s["learned.choice_bal_acc.ci_lo"] > 0.25 and s["hsa_mean.choice_bal_acc.p"] > 0.01
    assert 0 < s["learned.choice_collapse.top_share"] < 0.5 and s["learned.choice_collapse.entropy_norm"] > 0.9
    # recovered fraction: open bracket
    assert s["learned.recovered_loss.ci_lo"] < 0.6 < s["learned.recovered_loss.ci_hi"]


def test_recovered_fraction_left_out_when_the_bracket_is_closed():
    s = build_summary(_runs(), METRICS, examples=_examples(gap=0.0), **BUILD_KW)
    assert not any(".recovered_" in k for k in s)
    assert s["cmp.oracle-none.loss.significant"] is False


def test_one_seed_per_example_results_give_no_intervals_and_no_significance():
    s = build_summary(_runs(), METRICS, examples=_examples(seeds=(0,)), **BUILD_KW)
    assert "learned.loss.ci_lo" not in s and s["learned.loss.n"] == 1
    assert not any(v is True for k, v in s.items() if k.startswith("cmp.") and k.endswith(".significant"))
    assert "cmp.learned-none.loss.p" not in s and "cmp.learned-none.loss.effect" in s


def test_per_example_frame_errors():
    ex = _examples(n=40)
    with pytest.raises(AggregateError, match="both run metrics"):
        build_summary(_runs(), ["loss"], examples=ex, **BUILD_KW)
    dup = pd.concat([ex, ex.iloc[:1]])
    with pytest.raises(ValueError, match="duplicate"):
        build_summary(_runs(), METRICS, examples=dup, **BUILD_KW)
    empty = build_summary(_runs(), METRICS, examples=ex.iloc[:0], **BUILD_KW)
    assert empty == build_summary(_runs(), METRICS, **BUILD_KW)


def test_failed_runs_entry_is_allowed():
    validate_summary({"learned.test_ppl.mean": 1.0, "failed_runs": {"learned-seed2": "oracle gate"}})
    with pytest.raises(SummaryError):
        validate_summary({"learned.test_ppl.mean": 1.0, "failed_runs": {"learned-seed2": 3}})
