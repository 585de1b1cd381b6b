"""Aggregation over seeds into the flat DVC metrics summary (multimem.evaluation.aggregate)."""
import json

import numpy as np
import pytest

from multimem.evaluation.aggregate import (
    SUMMARY_SCHEMA, AggregateError, SummaryError, aggregate_runs, build_summary,
    paired_differences, validate_summary,
)

METRICS = ["test_ppl", "selection_top1"]
KW = dict(confidence=0.95, n_resamples=300, seed=0)


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
    validate_summary(out)


def test_paired_differences_detect_shift_hidden_by_seed_spread():
    out = paired_differences(_runs(), METRICS, baseline="memory_norm", **KW)
    key = "diff.learned-memory_norm.test_ppl"
    assert out[f"{key}.mean_diff"] == pytest.approx(-3.0, abs=0.3)
    assert out[f"{key}.significant"] is True and out[f"{key}.ci_hi"] < 0 and out[f"{key}.n"] == 5
    assert out["diff.learned-memory_norm.selection_top1.significant"] is True
    assert not any(k.startswith("diff.memory_norm-") for k in out)


def test_paired_differences_pair_by_seed_and_ignore_noise():
    rng = np.random.default_rng(1)
    runs = [{"variant": v, "seed": s, "test_ppl": 50 + rng.normal()} for v in ("a", "b") for s in range(8)]
    runs.append({"variant": "a", "seed": 99, "test_ppl": 1000.0})  # no partner in b: left out
    out = paired_differences(runs, ["test_ppl"], baseline="b", **KW)
    assert out["diff.a-b.test_ppl.n"] == 8 and out["diff.a-b.test_ppl.significant"] is False


def test_build_summary_is_valid_json_and_deterministic():
    s1 = build_summary(_runs(), METRICS, baseline="memory_norm", **KW)
    s2 = build_summary(_runs(), METRICS, baseline="memory_norm", **KW)
    assert s1 == s2
    assert json.loads(json.dumps(s1)) == s1
    assert any(k.startswith("diff.") for k in s1) and any(k.startswith("learned.") for k in s1)


def test_missing_metric_skipped_and_single_seed():
    runs = [{"variant": "uniform", "seed": 0, "test_ppl": 80.0, "selection_top1": None}]
    out = aggregate_runs(runs, METRICS, **KW)
    assert out == {"uniform.test_ppl.mean": 80.0, "uniform.test_ppl.std": 0.0,
                   "uniform.test_ppl.ci_lo": 80.0, "uniform.test_ppl.ci_hi": 80.0, "uniform.test_ppl.n": 1}


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
