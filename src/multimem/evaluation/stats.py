"""Statistics the report's conclusions rest on (issue 12; docs/v2-science.md "Statistics that hold at these sizes").

The unit of evidence is the test example; training seeds are a second, crossed level: every seed's model
answers the same test examples. Per-example results arrive as one long DataFrame per experiment with one
row per (variant, seed, example) and columns ``variant, seed, example, true_slot, chosen_slot, loss, tokens,
correct`` (``chosen_slot`` is -1 for the reference mixers oracle / uniform / none).

What is here, and why:

- ``t_interval``: Student-t interval over seeds (``scipy.stats.t``). A bootstrap over 3 values (the code this
  replaces) covers 74% and called 26% of null differences significant.
- ``paired_compare`` / ``compare_variants``: variant vs variant on per-example values paired by (seed,
  example) and pooled over seeds. Effect = mean difference; its variance is the crossed random-effects
  (seeds x examples) estimate from the two-way ANOVA mean squares; the reference distribution is Student-t
  with S - 1 degrees of freedom (S seeds), and the p-value is the larger of that t-test's and a sign-flip
  permutation test's over the seed-averaged per-example differences. Why this and not the two simpler
  designs (simulated; tests/test_stats_validity.py repeats the first and the final design's checks):

  * a sign-flip (or bootstrap) over examples alone treats the trained models as fixed, but every trained
    model has its own offset (the variant x seed interaction): in the tests' seed-heavy simulation it gives
    p < 0.05 for 26-31% of null comparisons at 3-5 seeds;
  * a two-level bootstrap (seeds, then examples) resamples 3 seeds (10 distinct multisets): its seed level
    is the bootstrap over 3 values that undercovers;
  * Satterthwaite degrees of freedom for the crossed variance (Satterthwaite 1946) estimate the seed share
    of the variance from S - 1 = 2 degrees of freedom; in a grid over seed, example and residual variances
    (4,000 experiments per cell) they gave 7-8.5% false positives at 3 seeds where the seed share was large.
    With df = S - 1 (the coarsest level, in the spirit of Clark's 1973 min F') this function stayed at or
    below 5.3% (p < 0.05) in every cell of that grid at 3 and 5 seeds (the 0.3% over 5% is Monte Carlo
    noise of the exact t_{2} case). The price is power at 3 seeds (t_{2, 0.975} = 4.30; the test is
    conservative where the seed share is small): with three seeds only large effects are called
    significant, which is what three seeds support.

  The sign-flip test (exact for "these trained models do not differ on the example population", Fisher
  1935; p-value (1 + #{|T*| >= |T|}) / (B + 1), Phipson & Smyth 2010) guards the example level against
  heavy-tailed per-example losses; taking the larger p keeps the level of whichever test is valid.
  When every seed gives identical per-example differences (seed-independent models, e.g. two initial
  models), there is no seed variance to estimate and df = N - 1.
- ``holm``: Holm (1979) step-down adjustment across all comparisons a report makes. "Significant" only
  from p_holm < alpha with a valid test (>= 2 seeds, >= 2 examples, non-zero spread); zero spread never.
- Selection (``selection_stats``): balanced accuracy (mean per-class recall over the classes present),
  chance from the class sizes (accuracy: the largest class share, what a constant predictor gets; balanced
  accuracy: 1/K), a cluster bootstrap over unique queries when several seeds answered the same queries
  (``scipy.stats.bootstrap``, BCa, Efron 1987), a permutation null that shuffles the truths against the
  predictions (``scipy.stats.permutation_test``), and collapse diagnostics (share of answers sent to the
  most-chosen slot; entropy of the choice distribution in nats and over ln K).
- ``recovered_fraction``: (landmark - none) / (oracle - none) with a Fieller (1954) interval from the same
  crossed variance, only when the bracket is open (the oracle - none interval excludes 0).
- ``clopper_pearson`` / ``binomial_p_value``: exact binomial inference for one model's selection answers.

Design notes (crossed variance). For a difference matrix D [S, N] (seeds x examples) modelled as
D_si = delta + u_s + e_i + eps_si with independent seed (u), example (e) and residual (eps) terms, the
grand mean has variance sigma_u^2/S + sigma_e^2/N + sigma_eps^2/(SN), estimated without bias by
(MS_seed + MS_example - MS_residual) / (SN) (Searle, Casella & McCulloch 1992, ch. 4). Its seed part has
S - 1 degrees of freedom, hence t_{S-1}. It is not floored at MS_residual / (SN) (the value when the seed
and example components are zero): a floor cuts off the small variance estimates that make t_{S-1} heavy-
tailed and, simulated, turned the 5% test into a 0-0.4% one where residual noise dominates (Bernoulli
accuracy). A non-positive estimate (rare: MS_seed + MS_example <= MS_residual) makes the test invalid.
"""
from __future__ import annotations

import math
import warnings
import zlib
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

ALTERNATIVES = ("greater", "less", "two-sided")
KEY_COLUMNS = ("variant", "seed", "example")


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r}: must lie strictly between 0 and 1")


def _alpha(confidence: float, alpha: float | None) -> float:
    _check_confidence(confidence)
    a = 1.0 - confidence if alpha is None else alpha
    if not 0.0 < a < 1.0:
        raise ValueError(f"alpha={alpha!r}: must lie strictly between 0 and 1")
    return a


# --------------------------------------------------------------------------------------------------
# Exact binomial inference (one model's selection answers)
# --------------------------------------------------------------------------------------------------

def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper & Pearson 1934) two-sided interval for a binomial proportion k/n.

    lo = Beta(alpha/2; k, n-k+1) (0 when k = 0), hi = Beta(1-alpha/2; k+1, n-k) (1 when k = n).
    """
    if n < 1 or not 0 <= k <= n or int(k) != k:
        raise ValueError(f"k={k!r}, n={n!r}: need integers with n >= 1 and 0 <= k <= n")
    _check_confidence(confidence)
    alpha = 1.0 - confidence
    lo = 0.0 if k == 0 else float(sps.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(sps.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def binomial_p_value(k: int, n: int, p0: float, alternative: str = "greater") -> float:
    """Exact binomial test of k successes in n independent trials against success probability p0.

    alternative="greater": P(X >= k | n, p0). Only for independent trials: answers of several seeds to the
    same queries are not (use ``selection_stats``).
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r}: allowed {ALTERNATIVES}")
    if not 0.0 <= p0 <= 1.0:
        raise ValueError(f"p0={p0!r}: must lie in [0, 1]")
    return float(sps.binomtest(int(k), int(n), p0, alternative=alternative).pvalue)


# --------------------------------------------------------------------------------------------------
# Across seeds: Student-t
# --------------------------------------------------------------------------------------------------

def _as_1d(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)  # [n]
    if x.size == 0:
        raise ValueError(f"{name}: empty, need at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}={x.tolist()}: contains NaN or inf")
    return x


SPREAD_RTOL = 1e-9


def _no_spread(x: np.ndarray, scale: float | np.ndarray, axis: Any = None) -> np.ndarray:
    """True where the range of x is 0 up to rounding: ptp(x) <= SPREAD_RTOL * scale (the inputs' magnitude).

    (b + 0.5) - b is not exactly constant in floating point; such a difference has no spread either.
    """
    return np.ptp(x, axis=axis) <= SPREAD_RTOL * np.asarray(scale)


class Interval(NamedTuple):
    """A mean with its two-sided interval; lo = hi = NaN when n < 2, lo = hi = mean when the spread is 0."""

    mean: float
    lo: float
    hi: float
    n: int


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """Student-t interval for the mean of ``values`` [n] (e.g. one value per seed).

    mean +- t_{n-1, (1+confidence)/2} * s / sqrt(n) (Student 1908; ``scipy.stats.t``). n < 2: the interval
    is NaN (no spread to judge by). Zero spread: the degenerate interval [mean, mean], which is no evidence of
    anything (nothing built on it is ever called significant).
    """
    x = _as_1d(values, "values")
    _check_confidence(confidence)
    m, n = float(x.mean()), int(x.size)
    if n < 2:
        return Interval(m, math.nan, math.nan, n)
    if _no_spread(x, np.abs(x).max()):
        return Interval(m, m, m, n)
    s = float(x.std(ddof=1))
    lo, hi = sps.t.interval(confidence, n - 1, loc=m, scale=s / math.sqrt(n))
    return Interval(m, float(lo), float(hi), n)


def summarize(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> dict[str, float | int]:
    """Mean, sample std (ddof=1), Student-t interval of the mean and count of ``values`` [n].

    std, ci_lo and ci_hi are NaN for a single value.
    """
    x = _as_1d(values, "values")
    iv = t_interval(x, confidence)
    std = float(x.std(ddof=1)) if x.size > 1 else math.nan
    return {"mean": iv.mean, "std": std, "ci_lo": iv.lo, "ci_hi": iv.hi, "n": iv.n}


def paired_difference(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95,
) -> dict[str, float | int | bool]:
    """Seed-level paired comparison: mean of a - b over paired values [n] (same seeds, same order).

    Student-t interval of the mean difference and the paired t-test's two-sided p-value
    (``scipy.stats.ttest_1samp`` on the differences). ``significant`` (unadjusted: p < 1 - confidence) is
    False with fewer than 2 pairs or zero spread (p is NaN then). This ignores test-set uncertainty (the
    values are whole-test-set metrics): ``paired_compare`` on per-example values is the primary comparison.
    """
    xa, xb = _as_1d(a, "a"), _as_1d(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"a has {xa.size} values, b has {xb.size}: paired values need equal length")
    d = xa - xb  # [n]
    iv = t_interval(d, confidence)
    valid = d.size >= 2 and not _no_spread(d, max(np.abs(xa).max(), np.abs(xb).max()))
    p = float(sps.ttest_1samp(d, 0.0).pvalue) if valid else math.nan
    return {"mean_diff": iv.mean, "ci_lo": iv.lo, "ci_hi": iv.hi, "p": p,
            "significant": bool(valid and p < 1.0 - confidence), "n": int(d.size)}


# --------------------------------------------------------------------------------------------------
# Multiplicity
# --------------------------------------------------------------------------------------------------

def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values along the last axis of ``pvalues`` [..., m].

    Sorted ascending p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)); reject
    H_(i) at family-wise level alpha iff adj_(i) < alpha. NaN entries (comparisons without a valid test)
    stay NaN and do not count in m. Written by hand: scipy offers no Holm adjustment.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim == 0:
        raise ValueError("pvalues: need at least one dimension [..., m]")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("pvalues must lie in [0, 1]")
    order = np.argsort(p, axis=-1, kind="stable")  # NaN sort last
    ps = np.take_along_axis(p, order, axis=-1)  # [..., m]
    m = np.sum(~np.isnan(ps), axis=-1, keepdims=True)  # [..., 1]
    factor = m - np.arange(p.shape[-1])  # [..., m]: m, m-1, ...
    adj = np.minimum(1.0, factor * ps)
    adj = np.where(np.isnan(adj), -np.inf, adj)
    adj = np.maximum.accumulate(adj, axis=-1)
    adj = np.where(np.isnan(ps), np.nan, adj)
    out = np.empty_like(adj)
    np.put_along_axis(out, order, adj, axis=-1)
    return out


def decide(p_holm: np.ndarray | float, valid: np.ndarray | bool, alpha: float) -> np.ndarray:
    """The one rule for "significant": a valid test and Holm-adjusted p < alpha (NaN never)."""
    p = np.asarray(p_holm, dtype=np.float64)
    return np.asarray(valid, dtype=bool) & (np.nan_to_num(p, nan=1.0) < alpha)


# --------------------------------------------------------------------------------------------------
# Variant vs variant on per-example values: crossed seeds x examples
# --------------------------------------------------------------------------------------------------

def _mean_squares(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-way (seeds x examples, one value per cell) ANOVA mean (cross-)products of x, y [..., S, N].

    Returns MS_seed, MS_example, MS_residual, each [...] (bilinear in x and y; x = y gives mean squares).
    Needs S >= 2 and N >= 2.
    """
    s, n = x.shape[-2:]
    gx, gy = x.mean((-2, -1), keepdims=True), y.mean((-2, -1), keepdims=True)  # [..., 1, 1]
    rx, ry = x.mean(-1, keepdims=True) - gx, y.mean(-1, keepdims=True) - gy  # [..., S, 1] seed effects
    cx, cy = x.mean(-2, keepdims=True) - gx, y.mean(-2, keepdims=True) - gy  # [..., 1, N] example effects
    ms_seed = n * (rx * ry).sum((-2, -1)) / (s - 1)
    ms_ex = s * (cx * cy).sum((-2, -1)) / (n - 1)
    ms_res = ((x - gx - rx - cx) * (y - gy - ry - cy)).sum((-2, -1)) / ((s - 1) * (n - 1))
    return ms_seed, ms_ex, ms_res


def _seed_free(x: np.ndarray) -> np.ndarray:
    """[...] True where every seed's row of x [..., S, N] is identical (the values do not depend on the seed)."""
    return np.all(x == x[..., :1, :], axis=(-2, -1))


def crossed_variance(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Variance estimate of the grand mean of x [..., S, N] (seeds x examples, crossed) and its t df.

    var = (MS_seed + MS_example - MS_residual) / (S N) (module notes; may be <= 0 by chance); df = S - 1,
    or N - 1 where the rows are identical across seeds (no seed variance exists). Returns (var [...],
    df [...]); NaN where S < 2 or N < 2.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"x shape {x.shape}: need [..., S, N]")
    s, n = x.shape[-2:]
    if s < 2 or n < 2:
        nan = np.full(x.shape[:-2], np.nan)
        return nan, nan
    ms_seed, ms_ex, ms_res = _mean_squares(x, x)
    var = (ms_seed + ms_ex - ms_res) / (s * n)
    df = np.where(_seed_free(x), n - 1.0, s - 1.0)
    return var, df


def sign_flip_pvalue(d: np.ndarray, n_permutations: int = 2000, seed: int = 0) -> np.ndarray:
    """Two-sided sign-flip permutation p-value of mean(d) = 0 for d [..., N] (e.g. per-example differences).

    Exact under H0 "each d_i is symmetric about 0, independently" (Fisher 1935). Monte Carlo with
    ``n_permutations`` seeded sign vectors shared across the leading axes; p = (1 + #{|T*| >= |T|}) / (B + 1)
    (Phipson & Smyth 2010), never 0. Returns p [...].
    """
    d = np.asarray(d, dtype=np.float64)
    if d.ndim < 1 or d.shape[-1] < 1:
        raise ValueError(f"d shape {d.shape}: need [..., N] with N >= 1")
    if n_permutations < 1:
        raise ValueError(f"n_permutations={n_permutations!r}: must be >= 1")
    n = d.shape[-1]
    signs = np.random.default_rng(seed).integers(0, 2, size=(n, n_permutations)).astype(np.float64) * 2 - 1  # [N, B]
    obs = np.abs(d.mean(-1))  # [...]
    null = np.abs(d @ signs) / n  # [..., B]
    extreme = (null >= obs[..., None] * (1.0 - 1e-9)).sum(-1)  # relative tolerance: ties count
    return (1.0 + extreme) / (n_permutations + 1.0)


class PairedComparison(NamedTuple):
    """``paired_compare`` result; every field is an array [...] over the leading axes of its inputs.

    effect: mean of a - b over seeds and examples; ci_lo/ci_hi: effect -+ t_{df} * se (unadjusted);
    se: sqrt(crossed variance); df: S - 1 (N - 1 when seed-free); p_t: two-sided t-test; p_signflip:
    sign-flip over the seed-averaged per-example differences; p = max(p_t, p_signflip); valid: S >= 2,
    N >= 2, non-zero spread and a positive variance estimate (p is NaN otherwise; zero spread gives the
    degenerate ci [effect, effect], a non-positive estimate a NaN ci).
    """

    effect: np.ndarray
    ci_lo: np.ndarray
    ci_hi: np.ndarray
    se: np.ndarray
    df: np.ndarray
    p_t: np.ndarray
    p_signflip: np.ndarray
    p: np.ndarray
    n_seeds: int
    n_examples: int
    valid: np.ndarray


def paired_compare(
    a: np.ndarray, b: np.ndarray, confidence: float = 0.95, n_permutations: int = 2000, seed: int = 0,
) -> PairedComparison:
    """Variant a vs variant b on per-example values a, b [..., S, N], paired by (seed, example).

    Effect = mean(a - b) pooled over S seeds and N examples, with a Student-t interval whose variance is
    the crossed seeds x examples estimate (``crossed_variance``) and df = S - 1; p = max(t-test p,
    sign-flip p) (module docstring: why this design is valid at 3 seeds). Vectorised over leading axes
    (the validity simulations run 1,000 experiments in one call). Seeded and deterministic.
    """
    _check_confidence(confidence)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"a shape {a.shape}, b shape {b.shape}: need equal shapes [..., S, N]")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("a or b contains NaN or inf")
    s, n = a.shape[-2:]
    d = a - b  # [..., S, N]
    effect = d.mean((-2, -1))  # [...]
    var, df = crossed_variance(d)
    scale = np.maximum(np.abs(a).max((-2, -1)), np.abs(b).max((-2, -1)))  # [...]
    flat = _no_spread(d.reshape(*d.shape[:-2], -1), scale, axis=-1)  # [...] zero spread
    valid = np.isfinite(var) & (var > 0.0) & ~flat
    se = np.where(valid, np.sqrt(np.where(valid, var, 1.0)), np.where(flat, 0.0, np.nan))
    with np.errstate(invalid="ignore", divide="ignore"):
        half = np.where(valid, sps.t.ppf(0.5 + confidence / 2, np.where(valid, df, 1.0)) * se, 0.0)
        half = np.where(valid | flat, half, np.nan)
        p_t = np.where(valid, 2.0 * sps.t.sf(np.abs(effect) / np.where(valid, se, 1.0), np.where(valid, df, 1.0)),
                       np.nan)
    p_flip = sign_flip_pvalue(d.mean(-2), n_permutations, seed)  # [...]
    p = np.where(valid, np.maximum(p_t, p_flip), np.nan)
    return PairedComparison(effect, effect - half, effect + half, se, df, p_t, p_flip, p, s, n, valid)


def _check_frame(df: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in (*KEY_COLUMNS, *columns) if c not in df.columns]
    if missing:
        raise ValueError(f"per-example frame lacks columns {missing}; has {list(df.columns)}")


def example_matrix(
    df: pd.DataFrame, metric: str, variant: str, seeds: Sequence[int] | None = None,
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """One variant's per-example values as a matrix [S, N] (rows: seeds, columns: examples, both sorted).

    ``seeds`` restricts (and orders) the rows. Raises ValueError on duplicate (variant, seed, example) rows,
    non-finite values or examples missing for some seed (the contract: the same examples for every seed).
    Returns (values [S, N], seeds, example ids [N]).
    """
    _check_frame(df, [metric])
    sub = df.loc[df["variant"] == variant, ["seed", "example", metric]]
    if sub.empty:
        raise ValueError(f"variant {variant!r}: no rows")
    if sub.duplicated(["seed", "example"]).any():
        raise ValueError(f"variant {variant!r}: duplicate (seed, example) rows")
    wide = sub.pivot(index="seed", columns="example", values=metric).sort_index().sort_index(axis=1)
    if seeds is not None:
        absent = sorted(set(seeds) - set(wide.index))
        if absent:
            raise ValueError(f"variant {variant!r}: no rows for seeds {absent}")
        wide = wide.loc[list(seeds)]
    values = wide.to_numpy(dtype=np.float64)  # [S, N]
    if np.isnan(values).any():
        raise ValueError(f"variant {variant!r} {metric}: some seeds lack some examples (or hold NaN)")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"variant {variant!r} {metric}: non-finite values")
    return values, [int(s) for s in wide.index], wide.columns.to_numpy()


def _pair_matrices(df: pd.DataFrame, metric: str, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    """a and b as [S, N] over the seeds both have, checked to hold the same examples."""
    seeds = sorted(set(df.loc[df["variant"] == a, "seed"]) & set(df.loc[df["variant"] == b, "seed"]))
    if not seeds:
        raise ValueError(f"variants {a!r} and {b!r} share no seed")
    xa, _, ea = example_matrix(df, metric, a, seeds)
    xb, _, eb = example_matrix(df, metric, b, seeds)
    if ea.shape != eb.shape or np.any(ea != eb):
        raise ValueError(f"variants {a!r} and {b!r} hold different test examples")
    return xa, xb


def _stream(seed: int, *names: str) -> int:
    """A stable per-comparison random stream: seed and the comparison's names (not its position)."""
    return int(np.random.SeedSequence([seed, zlib.crc32("\0".join(names).encode())]).generate_state(1)[0])


COMPARE_COLUMNS = ("a", "b", "metric", "n_seeds", "n_examples", "effect", "ci_lo", "ci_hi", "se", "df",
                   "p_t", "p_signflip", "p", "p_holm", "significant")


def compare_variants(
    df: pd.DataFrame, metric: str | Sequence[str], pairs: Sequence[tuple[str, str]],
    confidence: float = 0.95, alpha: float | None = None, n_permutations: int = 2000, seed: int = 0,
) -> pd.DataFrame:
    """Paired comparisons of the per-example frame, one row per (metric, pair), Holm across all rows.

    df: the long per-example frame (module docstring); metric: a column or a list of columns; pairs:
    (a, b) variant names, effect = a - b over the seeds both have. Each row is ``paired_compare`` of the two
    [S, N] matrices; p_holm is Holm (1979) across every row of the returned frame (pass all the comparisons
    a report makes in one call); significant = valid test and p_holm < alpha (alpha defaults to
    1 - confidence). Columns: COMPARE_COLUMNS; ci_lo/ci_hi are per-comparison (unadjusted) intervals.
    The sign-flip p is at least 1/(n_permutations + 1), so m comparisons need n_permutations + 1 > m / alpha
    (warned otherwise).
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    a_ = _alpha(confidence, alpha)
    _check_frame(df, metrics)
    rows: list[dict[str, Any]] = []
    valid: list[bool] = []
    for m in metrics:
        for a, b in pairs:
            xa, xb = _pair_matrices(df, m, a, b)
            r = paired_compare(xa, xb, confidence, n_permutations, _stream(seed, a, b, m))
            valid.append(bool(r.valid))
            rows.append({"a": a, "b": b, "metric": m, "n_seeds": r.n_seeds, "n_examples": r.n_examples,
                         **{k: float(getattr(r, k)) for k in ("effect", "ci_lo", "ci_hi", "se", "df", "p_t",
                                                              "p_signflip", "p")}})
    if rows and len(rows) / (n_permutations + 1.0) >= a_:
        warnings.warn(f"{len(rows)} comparisons with n_permutations={n_permutations}: the smallest Holm-adjusted "
                      f"p-value, {len(rows)}/(n_permutations + 1), is not below alpha={a_}; nothing can be "
                      "significant. Raise n_permutations.", stacklevel=2)
    out = pd.DataFrame(rows, columns=[c for c in COMPARE_COLUMNS if c not in ("p_holm", "significant")])
    p_holm = holm(out["p"].to_numpy()) if rows else np.array([])
    out["p_holm"] = p_holm
    out["significant"] = decide(p_holm, np.array(valid, dtype=bool), a_) if rows else np.array([], dtype=bool)
    return out[list(COMPARE_COLUMNS)]


# --------------------------------------------------------------------------------------------------
# Selection: balanced accuracy, chance from class sizes, cluster bootstrap, permutation null, collapse
# --------------------------------------------------------------------------------------------------

def _selection_arrays(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checked truths [N] and predictions [S, N] (a [N] prediction is one seed)."""
    y = np.asarray(y_true)
    p = np.asarray(y_pred)
    if p.ndim == 1:
        p = p[None, :]
    if y.ndim != 1 or y.size < 1 or p.ndim != 2 or p.shape[1] != y.size:
        raise ValueError(f"y_true shape {y.shape}, y_pred shape {p.shape}: need [N] and [N] or [S, N]")
    if not (np.issubdtype(y.dtype, np.integer) and np.issubdtype(p.dtype, np.integer)):
        raise ValueError(f"y_true dtype {y.dtype}, y_pred dtype {p.dtype}: need integer slot ids")
    return y.astype(np.int64), p.astype(np.int64)


def _class_ids(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Truths as class ids 0..K-1 over the classes present [N]; predictions mapped likewise, -1 elsewhere."""
    classes, yc = np.unique(y, return_inverse=True)
    pos = np.clip(np.searchsorted(classes, p), 0, classes.size - 1)
    pc = np.where(classes[pos] == p, pos, -1)  # [S, N]
    return yc.reshape(-1), pc, int(classes.size)


def _recalls(hit: np.ndarray, yc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy [...], balanced accuracy [...]) from per-query hit fractions and class ids, both [..., N]."""
    acc = hit.mean(-1)
    rec = []
    for c in range(k):
        m = yc == c
        nc = m.sum(-1)
        rec.append(np.where(nc > 0, (hit * m).sum(-1) / np.maximum(nc, 1), np.nan))
    with np.errstate(invalid="ignore"):
        return acc, np.nanmean(np.stack(rec, -1), -1)


def balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    """Mean over the classes present in y_true [N] of the per-class recall of y_pred [N] or [S, N].

    With several seeds [S, N], each query's hit is the fraction of seeds that chose its true slot. A constant
    predictor scores exactly 1/K (K classes present), whatever the class sizes (Brodersen et al. 2010).
    """
    y, p = _selection_arrays(y_true, y_pred)
    yc, pc, k = _class_ids(y, p)
    return float(_recalls((pc == yc).mean(0), yc, k)[1])


def selection_chance(y_true: Any) -> dict[str, float | int]:
    """Chance levels from the class sizes of y_true [N].

    acc: the largest class share, the accuracy of the best constant predictor (unequal classes: not 1/K);
    balanced: 1/K, the balanced accuracy of any constant predictor; n_classes: K (classes present).
    """
    y = np.asarray(y_true).reshape(-1)
    _, counts = np.unique(y, return_counts=True)
    return {"acc": float(counts.max() / y.size), "balanced": 1.0 / counts.size, "n_classes": int(counts.size)}


def choice_collapse(y_pred: Any, n_slots: int) -> dict[str, float]:
    """Collapse diagnostics of the chosen slots y_pred [N] or [S, N] (pooled) over ``n_slots`` slots.

    top_share: share of answers sent to the most-chosen slot (1/K uniform, 1 collapsed);
    entropy_nats: entropy of the choice distribution (``scipy.stats.entropy``, nats);
    entropy_norm: entropy_nats / ln(n_slots) (1 uniform, 0 collapsed; NaN for one slot).
    """
    p = np.asarray(y_pred).reshape(-1)
    if p.size == 0 or p.min() < 0 or p.max() >= n_slots:
        raise ValueError(f"y_pred: need slot ids in 0..{n_slots - 1}")
    counts = np.bincount(p, minlength=n_slots)
    h = float(sps.entropy(counts))
    return {"top_share": float(counts.max() / p.size), "entropy_nats": h,
            "entropy_norm": h / math.log(n_slots) if n_slots > 1 else math.nan}


def selection_stats(
    y_true: Any, y_pred: Any, n_slots: int | None = None, confidence: float = 0.95,
    n_resamples: int = 2000, seed: int = 0,
) -> dict[str, float | int]:
    """Selection accuracy of predictions y_pred [S, N] (S seeds answering the same N queries) vs y_true [N].

    Point estimates pool the S answers per query. Uncertainty treats the query as the unit:
    - cluster bootstrap over queries (a query's S answers move together; ``scipy.stats.bootstrap``, BCa,
      falling back to percentile where BCa is undefined): acc_ci_lo/hi, balanced_ci_lo/hi;
    - permutation null: the truths are shuffled against the queries' answers (``scipy.stats.permutation_test``,
      ``n_resamples`` random permutations, one-sided "greater"): acc_p, balanced_p, the evidence that the
      choices carry information about the true slot (a collapsed predictor is not above this null);
    - chance from the class sizes (``selection_chance``): acc_chance, balanced_chance;
    - collapse (``choice_collapse``) over n_slots (default: the largest slot id seen + 1).
    Returns a dict of floats and ints (keys above plus n_queries, n_seeds, n_classes, acc, balanced_acc,
    top_share, entropy_nats, entropy_norm). Seeded and deterministic.
    """
    _check_confidence(confidence)
    y, p = _selection_arrays(y_true, y_pred)
    if p.min() < 0:
        raise ValueError("y_pred holds negative slot ids (-1: a reference mixer has no landmark choice)")
    k_slots = int(max(y.max(), p.max()) + 1) if n_slots is None else int(n_slots)
    yc, pc, k = _class_ids(y, p)
    n = y.size

    def boot_stat(idx: np.ndarray, axis: int = -1) -> np.ndarray:  # idx [..., n] resampled queries
        i = idx.astype(np.int64)
        hit = (pc[:, i] == yc[i]).mean(0)  # [..., n]
        acc, bal = _recalls(hit, yc[i], k)
        return np.stack([acc, bal], 0)

    def perm_stat(idx: np.ndarray, axis: int = -1) -> np.ndarray:  # idx [..., N] permuted truths
        yt = yc[idx.astype(np.int64)]  # [..., N]
        hit = (pc == yt[..., None, :]).mean(-2)  # [..., N]
        acc, bal = _recalls(hit, yt, k)
        return np.stack([acc, bal], 0)

    acc, bal = boot_stat(np.arange(n))
    out: dict[str, float | int] = {"n_queries": int(n), "n_seeds": int(p.shape[0]), "n_classes": k,
                                   "acc": float(acc), "balanced_acc": float(bal)}
    idx = (np.arange(n),)
    for j, name in enumerate(("acc", "balanced")):
        lo = hi = math.nan
        if n >= 2:
            for method in ("BCa", "percentile"):
                with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # degenerate resamples: handled by the fallback
                    ci = sps.bootstrap(idx, lambda i, axis=-1, j=j: boot_stat(i, axis)[j], n_resamples=n_resamples,
                                       vectorized=True, confidence_level=confidence, method=method,
                                       rng=np.random.default_rng(seed)).confidence_interval
                lo, hi = float(ci.low), float(ci.high)
                if math.isfinite(lo) and math.isfinite(hi):
                    break
            if not (math.isfinite(lo) and math.isfinite(hi)):  # no spread over resamples: degenerate
                lo = hi = float(acc if j == 0 else bal)
        out[f"{name}_ci_lo"], out[f"{name}_ci_hi"] = lo, hi
        res = sps.permutation_test(idx, lambda i, axis=-1, j=j: perm_stat(i, axis)[j], permutation_type="pairings",
                                   vectorized=True, n_resamples=n_resamples, alternative="greater",
                                   rng=np.random.default_rng(seed))
        out[f"{name}_p"] = float(res.pvalue)
    chance = selection_chance(y)
    out["acc_chance"], out["balanced_chance"] = chance["acc"], chance["balanced"]
    out.update(choice_collapse(p, k_slots))
    return out


def selection_arrays(df: pd.DataFrame, variant: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A variant's truths [N] and chosen slots [S, N] from the per-example frame (seeds and examples sorted).

    Raises ValueError when a query's true slot differs between seeds.
    """
    chosen, seeds, _ = example_matrix(df, "chosen_slot", variant)
    truth, _, _ = example_matrix(df, "true_slot", variant)
    if np.any(truth != truth[:1]):
        raise ValueError(f"variant {variant!r}: the true slot of a query differs between seeds")
    return truth[0].astype(np.int64), chosen.astype(np.int64), seeds


# --------------------------------------------------------------------------------------------------
# Recovered fraction of the oracle - none bracket
# --------------------------------------------------------------------------------------------------

class Recovered(NamedTuple):
    """(landmark - none) / (oracle - none) with its Fieller interval (``confidence``)."""

    fraction: float
    ci_lo: float
    ci_hi: float
    n_seeds: int
    n_examples: int


def _fieller(a: float, b: float, vaa: float, vab: float, vbb: float, c: float) -> tuple[float, float] | None:
    """Fieller (1954) set {R: (a - R b)^2 <= c^2 (vaa - 2 R vab + R^2 vbb)} when it is a bounded interval."""
    qa = b * b - c * c * vbb
    if qa <= 0:
        return None
    half = (a * b - c * c * vab)
    disc = half * half - qa * (a * a - c * c * vaa)
    if disc < 0:
        return None
    r = math.sqrt(disc)
    return (half - r) / qa, (half + r) / qa


def recovered_fraction(
    landmark: np.ndarray, none: np.ndarray, oracle: np.ndarray, confidence: float = 0.95,
) -> tuple[Recovered | None, str]:
    """Share of the oracle - none gap a landmark recovers, from per-example values [S, N] paired by (seed, example).

    fraction = mean(landmark - none) / mean(oracle - none). Returned only when the bracket is open: the
    oracle - none interval of ``paired_compare`` (crossed variance, df = S - 1) excludes 0; otherwise
    (None, reason). The interval is Fieller's (1954) for a ratio of two correlated means, with the
    crossed (co)variances of X = landmark - none and Y = oracle - none (the bilinear ANOVA estimates behind
    ``crossed_variance``) and the same t quantile. Not a bootstrap: over 3 seeds a bootstrap's seed level
    undercovers (module docstring), and Fieller's interval is bounded exactly when the denominator is
    significantly non-zero. Shapes: landmark, none, oracle [S, N] (same seeds and examples, same order).
    Returns (Recovered, "") or (None, why).
    """
    _check_confidence(confidence)
    lm, nn, oc = (np.asarray(v, dtype=np.float64) for v in (landmark, none, oracle))
    if lm.shape != nn.shape or nn.shape != oc.shape or lm.ndim != 2:
        raise ValueError(f"shapes {lm.shape}, {nn.shape}, {oc.shape}: need equal [S, N]")
    s, n = lm.shape
    if s < 2 or n < 2:
        return None, f"needs >= 2 seeds and >= 2 examples, got {s} x {n}"
    bracket = paired_compare(oc, nn, confidence, n_permutations=1)
    lo, hi = float(bracket.ci_lo), float(bracket.ci_hi)
    if not bool(bracket.valid) or lo <= 0.0 <= hi:
        return None, (f"bracket closed: oracle - none = {float(bracket.effect):.4g}, "
                      f"{int(100 * confidence)}% CI [{lo:.4g}, {hi:.4g}] does not exclude 0")
    x, y = lm - nn, oc - nn  # [S, N]
    a, b = float(x.mean()), float(y.mean())
    df = (n - 1) if bool(_seed_free(x) & _seed_free(y)) else (s - 1)
    c = float(sps.t.ppf(0.5 + confidence / 2, df))
    v = [float(ms[0] + ms[1] - ms[2]) / (s * n) for ms in (_mean_squares(u, w) for u, w in ((x, x), (x, y), (y, y)))]
    iv = _fieller(a, b, *v, c)
    if iv is None:
        return None, "the crossed variance estimate is not positive: no bounded Fieller interval"
    return Recovered(a / b, iv[0], iv[1], s, n), ""


def recovered_fraction_frame(
    df: pd.DataFrame, metric: str, landmark: str, none: str = "none", oracle: str = "oracle",
    confidence: float = 0.95,
) -> tuple[Recovered | None, str]:
    """``recovered_fraction`` of one landmark variant from the per-example frame (seeds all three share)."""
    seeds = sorted(set.intersection(*(set(df.loc[df["variant"] == v, "seed"]) for v in (landmark, none, oracle))))
    if not seeds:
        return None, f"variants {landmark!r}, {none!r}, {oracle!r} share no seed"
    mats = [example_matrix(df, metric, v, seeds) for v in (landmark, none, oracle)]
    if any(m[2].shape != mats[0][2].shape or np.any(m[2] != mats[0][2]) for m in mats):
        raise ValueError(f"variants {landmark!r}, {none!r}, {oracle!r} hold different test examples")
    return recovered_fraction(mats[0][0], mats[1][0], mats[2][0], confidence)
