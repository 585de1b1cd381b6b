"""Do the report's statistics hold at 3 and 5 seeds? (issue 12, multimem.evaluation.stats)

Simulated experiments with no true difference between variants, run through the functions the report uses
(``paired_compare`` -> ``holm`` -> ``decide``, which ``compare_variants`` applies to the per-example frame;
``test_frame_path_equals_the_array_path`` ties the two together), must call at most 6% of comparisons
significant; the Student-t interval over seeds must cover; a planted difference must be found; zero spread
is never significant.

Per-example model, one value per (experiment, variant, seed, example) [E, V, S, N]:
    loss = 3 + difficulty_i + variant_example_vi + seed_s + model_vs + noise_vsi (+ planted effect)
difficulty: per example, shared by variants and seeds (sd 1); variant_example: a variant's consistent
per-example advantage (sd 0.15); seed_s: shared by the variants of a seed (sd 0.05); model_vs: every trained
model's own offset (the variant x seed interaction that makes seeds a second level; sd 0.03 "seed-heavy" or
0.003 "example-heavy"); noise: sd 0.3. ``correct`` is Binomial(4 tokens, sigmoid(0.5 - centred loss)) / 4.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from multimem.evaluation.stats import (
    compare_variants, decide, holm, paired_compare, paired_difference, t_interval,
)

N_EXPERIMENTS = 1000
N_EXAMPLES = 500
PAIRS = ((1, 0), (2, 0), (2, 1))  # landmark vs none, landmark vs none, landmark vs landmark
ALPHA = 0.05
MODEL_SD = {"seed_heavy": 0.03, "example_heavy": 0.003}


def simulate(rng: np.random.Generator, n_exp: int, n_seeds: int, model_sd: float, n_variants: int = 3,
             effect: float = 0.0, n_examples: int = N_EXAMPLES) -> dict[str, np.ndarray]:
    """Per-example loss and correct [E, V, S, N]; ``effect`` is added to the loss of the last variant."""
    e, v, s, n = n_exp, n_variants, n_seeds, n_examples
    loss = rng.normal(0.0, 1.0, (e, 1, 1, n))  # difficulty
    loss = loss + rng.normal(0.0, 0.15, (e, v, 1, n))  # variant x example
    loss = loss + rng.normal(0.0, 0.05, (e, 1, s, 1))  # seed, shared by variants
    loss = loss + rng.normal(0.0, model_sd, (e, v, s, 1))  # variant x seed: each trained model's offset
    loss = loss + rng.normal(0.0, 0.3, (e, v, s, n))  # noise
    loss[:, -1] += effect
    correct = rng.binomial(4, 1.0 / (1.0 + np.exp(loss - 0.5))) / 4.0
    return {"loss": loss + 3.0, "correct": correct}


def run_report_rule(values: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The report's comparison rule on [E, V, S, N]: paired_compare per pair, Holm across the pairs, decide."""
    res = [paired_compare(values[:, a], values[:, b], 1 - ALPHA, seed=seed + k) for k, (a, b) in enumerate(PAIRS)]
    p = np.stack([r.p for r in res], -1)  # [E, P]
    valid = np.stack([r.valid for r in res], -1)
    p_holm = holm(p)
    return {"p": p, "p_holm": p_holm, "significant": decide(p_holm, valid, ALPHA),
            "p_signflip": np.stack([r.p_signflip for r in res], -1),
            "ci_lo": np.stack([r.ci_lo for r in res], -1), "ci_hi": np.stack([r.ci_hi for r in res], -1)}


@pytest.fixture(scope="module")
def null_runs() -> dict[tuple[int, str], dict[str, dict[str, np.ndarray]]]:
    """1,000 null experiments per (seeds, regime), both metrics, through the report's rule."""
    rng = np.random.default_rng(12)
    out = {}
    for n_seeds in (3, 5):
        for regime, sd in MODEL_SD.items():
            data = simulate(rng, N_EXPERIMENTS, n_seeds, sd)
            out[(n_seeds, regime)] = {m: run_report_rule(x) for m, x in data.items()}
    return out


@pytest.mark.parametrize("n_seeds", [3, 5])
@pytest.mark.parametrize("regime", list(MODEL_SD))
@pytest.mark.parametrize("metric", ["loss", "correct"])
def test_null_false_positive_rate_at_most_6_percent(null_runs, n_seeds, regime, metric):
    r = null_runs[(n_seeds, regime)][metric]
    raw = float((r["p"] < ALPHA).mean())  # the unadjusted test's level, per comparison
    called = float(r["significant"].mean())  # what the report calls significant (Holm), per comparison
    fwer = float(r["significant"].any(-1).mean())  # any of the experiment's 3 comparisons
    print(f"\n{metric} {n_seeds} seeds {regime}: raw p<0.05 {raw:.3f}, significant (Holm) {called:.3f}, "
          f"family-wise {fwer:.3f}")
    assert r["p"].shape == (N_EXPERIMENTS, len(PAIRS))
    assert raw <= 0.06 and called <= 0.06 and fwer <= 0.06


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_the_simulation_has_teeth_an_examples_only_test_fails_it(null_runs, n_seeds):
    """The per-example sign-flip alone (seeds treated as fixed) is what the seed level guards against."""
    r = null_runs[(n_seeds, "seed_heavy")]["loss"]
    rate = float((r["p_signflip"] < ALPHA).mean())
    print(f"\nexamples-only sign-flip, {n_seeds} seeds, seed-heavy: {rate:.3f} of null comparisons p < 0.05")
    assert rate > 0.15


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_paired_interval_covers_the_null_difference(null_runs, n_seeds):
    for regime in MODEL_SD:
        r = null_runs[(n_seeds, regime)]["loss"]
        cover = float(((r["ci_lo"] <= 0.0) & (0.0 <= r["ci_hi"])).mean())
        print(f"\npaired interval coverage, {n_seeds} seeds {regime}: {cover:.3f}")
        assert cover >= 0.94


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_t_interval_over_seeds_covers(n_seeds):
    """Seed means of a variant, conditional on the test set: the target is the examples' expected mean."""
    rng = np.random.default_rng(5 + n_seeds)
    e, n = 2000, 200
    base = rng.normal(0.0, 1.0, (e, 1, n))  # difficulty: the fixed test set
    seed_means = (base + rng.normal(0.0, 0.05, (e, n_seeds, 1)) + rng.normal(0.0, 0.3, (e, n_seeds, n))).mean(-1)
    target = base.mean((-2, -1))  # [E]
    ivs = [t_interval(m, 0.95) for m in seed_means]
    cover = float(np.mean([iv.lo <= t <= iv.hi for iv, t in zip(ivs, target)]))
    print(f"\nt-interval coverage over {n_seeds} seeds: {cover:.3f}")
    assert all(iv.n == n_seeds for iv in ivs)
    assert 0.90 <= cover <= 0.99


@pytest.mark.parametrize("n_seeds,effect", [(5, -0.15), (3, -0.4)])
def test_a_planted_difference_is_detected(n_seeds, effect):
    """Power: the last variant's loss is lower by ``effect`` in the seed-heavy regime (the harder one)."""
    data = simulate(np.random.default_rng(99), 300, n_seeds, MODEL_SD["seed_heavy"], effect=effect)
    r = run_report_rule(data["loss"])
    hit = r["significant"][:, 1:]  # (2, 0) and (2, 1) carry the planted difference
    print(f"\npower, {n_seeds} seeds, effect {effect}: {hit.mean():.3f}; "
          f"null pair called {r['significant'][:, 0].mean():.3f}")
    assert hit.mean() >= 0.8
    assert r["significant"][:, 0].mean() <= 0.06
    effects = np.array([paired_compare(data["loss"][i, 2], data["loss"][i, 0], n_permutations=1).effect
                        for i in range(20)])
    assert np.all(np.abs(effects - effect) < 0.1)


def _frame(values: dict[str, np.ndarray], names: tuple[str, ...]) -> pd.DataFrame:
    """Long per-example frame (the evaluate stage's contract) from {metric: [V, S, N]}."""
    v, s, n = values["loss"].shape
    idx = np.indices((v, s, n)).reshape(3, -1)
    return pd.DataFrame({"variant": np.array(names)[idx[0]], "seed": idx[1] * 7, "example": idx[2] + 100,
                         "true_slot": idx[2] % 4, "chosen_slot": -1, "tokens": 4,
                         **{m: x.reshape(-1) for m, x in values.items()}}).sample(frac=1.0, random_state=0)


def test_frame_path_equals_the_array_path():
    """compare_variants (the long frame, shuffled rows) gives what the simulations measure on arrays."""
    data = simulate(np.random.default_rng(3), 1, 3, MODEL_SD["seed_heavy"], effect=-0.2, n_examples=80)
    names = ("none", "hsa_mean", "learned")
    df = _frame({m: x[0] for m, x in data.items()}, names)
    pairs = [(names[a], names[b]) for a, b in PAIRS]
    out = compare_variants(df, ["loss", "correct"], pairs, confidence=0.95, n_permutations=500, seed=1)
    assert list(out[["a", "b", "metric"]].itertuples(index=False, name=None)) == [
        (a, b, m) for m in ("loss", "correct") for a, b in pairs]
    for row in out.itertuples():
        va, vb = names.index(row.a), names.index(row.b)
        ref = paired_compare(data[row.metric][0, va], data[row.metric][0, vb], 0.95, n_permutations=500)
        assert row.effect == pytest.approx(float(ref.effect)) and row.ci_lo == pytest.approx(float(ref.ci_lo))
        assert row.p_t == pytest.approx(float(ref.p_t)) and row.n_seeds == 3 and row.n_examples == 80
    assert np.allclose(out["p_holm"], holm(out["p"].to_numpy()))
    assert out["significant"].tolist() == decide(out["p_holm"].to_numpy(), np.ones(len(out), bool), 0.05).tolist()
    assert out.equals(compare_variants(df, ["loss", "correct"], pairs, confidence=0.95, n_permutations=500, seed=1))


def test_zero_spread_is_never_significant():
    rng = np.random.default_rng(0)
    b = rng.normal(3.0, 1.0, (3, 200))
    same = paired_compare(b, b)
    assert not same.valid and np.isnan(same.p) and same.effect == 0.0
    shifted = paired_compare(b + 0.5, b)  # a constant difference: no spread to judge it by
    assert not shifted.valid and np.isnan(shifted.p) and shifted.ci_lo == shifted.ci_hi == pytest.approx(0.5)
    assert not decide(holm(np.array([shifted.p, same.p])), np.array([shifted.valid, same.valid]), 0.05).any()
    assert t_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0, 3)
    assert paired_difference([0.0405] * 3, [0.0] * 3)["significant"] is False  # issue 12's sel_initial_top1
    single = paired_compare(b[:1] + 1.0 + rng.normal(0, 0.1, (1, 200)), b[:1])  # one seed: no seed level
    assert not single.valid and np.isnan(single.ci_lo) and np.isnan(single.p)
    one = t_interval([5.0])
    assert one.mean == 5.0 and np.isnan(one.lo) and np.isnan(one.hi)


def test_seed_independent_models_use_the_examples():
    """Identical rows across seeds (e.g. two initial models): df = N - 1 and no pseudo-replication."""
    rng = np.random.default_rng(1)
    a1, b1 = rng.normal(0.1, 1.0, (1, 400)), rng.normal(0.0, 1.0, (1, 400))
    three = paired_compare(np.repeat(a1, 3, 0), np.repeat(b1, 3, 0))
    d = (a1 - b1)[0]
    assert three.valid and three.df == 399
    assert float(three.se) == pytest.approx(d.std(ddof=1) / np.sqrt(400))  # N examples, not 3 N answers


def test_holm_matches_the_step_down_definition():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    assert np.allclose(holm(p), [0.03, 0.06, 0.06, 0.02])  # 4*.005, 3*.01, max(2*.03, .03*... ) monotone
    assert np.allclose(holm([[0.01, np.nan, 0.03]]), [[0.02, np.nan, 0.03]], equal_nan=True)
    assert np.all(holm(np.full(3, np.nan)) != holm(np.full(3, np.nan)))  # all NaN stays NaN
    big = np.random.default_rng(0).random((50, 7))
    adj = holm(big)
    assert np.all(adj >= big) and np.all(adj <= 1.0)
    with pytest.raises(ValueError):
        holm([1.5])


def test_too_few_permutations_for_the_number_of_comparisons_is_warned():
    data = simulate(np.random.default_rng(4), 1, 3, MODEL_SD["seed_heavy"], n_examples=30)
    df = _frame({m: x[0] for m, x in data.items()}, ("none", "a", "b"))
    with pytest.warns(UserWarning, match="Raise n_permutations"):
        out = compare_variants(df, "loss", [("a", "none"), ("b", "none")], n_permutations=20)
    assert not out["significant"].any() and (out["p"] >= 1 / 21).all()
