"""Confidence intervals and tests used by the evaluate stage.

- Exact binomial inference for selection accuracy: Clopper–Pearson interval and a one-sided
  binomial test against chance (v1 review, seed-v1.md §3 item 10: 4/20 -> [5.7%, 43.7%]).
- Bootstrap intervals (``scipy.stats.bootstrap``) for the mean of a metric over seeds, and for
  the mean paired difference between two variants trained with the same seeds.

Bootstrap intervals over few seeds (e.g. 3) are narrow and undercover; read them as a spread,
not as a calibrated 95% interval.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as sps

BOOTSTRAP_METHODS = ("BCa", "percentile", "basic")
ALTERNATIVES = ("greater", "less", "two-sided")


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r}: must lie strictly between 0 and 1")


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) two-sided interval for a binomial proportion k/n.

    lo = Beta(α/2; k, n-k+1) (0 when k = 0), hi = Beta(1-α/2; k+1, n-k) (1 when k = n).
    """
    if n < 1 or not 0 <= k <= n or int(k) != k:
        raise ValueError(f"k={k!r}, n={n!r}: need integers with n >= 1 and 0 <= k <= n")
    _check_confidence(confidence)
    alpha = 1.0 - confidence
    lo = 0.0 if k == 0 else float(sps.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(sps.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def binomial_p_value(k: int, n: int, p0: float, alternative: str = "greater") -> float:
    """Exact binomial test of k successes in n trials against success probability p0.

    alternative="greater": P(X >= k | n, p0), the evidence of selection above chance.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r}: allowed {ALTERNATIVES}")
    if not 0.0 <= p0 <= 1.0:
        raise ValueError(f"p0={p0!r}: must lie in [0, 1]")
    return float(sps.binomtest(int(k), int(n), p0, alternative=alternative).pvalue)


def _as_1d(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)  # [n]
    if x.size == 0:
        raise ValueError(f"{name}: empty, need at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}={x.tolist()}: contains NaN or inf")
    return x


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    method: str = "BCa",
) -> tuple[float, float]:
    """Bootstrap confidence interval for the mean of ``values`` [n].

    One value, or all values equal, gives (v, v): there is no spread to resample.
    BCa falls back to the percentile interval if it is undefined for the data (non-finite).
    Deterministic for a fixed seed.
    """
    x = _as_1d(values, "values")
    _check_confidence(confidence)
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"method={method!r}: allowed {BOOTSTRAP_METHODS}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples!r}: must be >= 1")
    if x.size == 1 or np.ptp(x) == 0.0:
        v = float(x.mean())
        return v, v
    for m in (method, "percentile"):
        res = sps.bootstrap(
            (x,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
            method=m, vectorized=True, rng=np.random.default_rng(seed),
        )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi
    raise ValueError(f"values={x.tolist()}: bootstrap interval undefined")


def summarize(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float | int]:
    """Mean, sample std (ddof=1; 0 for one value), bootstrap CI of the mean and count."""
    x = _as_1d(values, "values")
    lo, hi = bootstrap_ci(x, confidence, n_resamples, seed)
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return {"mean": float(x.mean()), "std": std, "ci_lo": lo, "ci_hi": hi, "n": int(x.size)}


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float | int | bool]:
    """Mean of a - b over paired values (same seeds, same order), with a bootstrap CI.

    ``significant`` is True when the CI excludes 0; always False with fewer than 2 pairs
    (one pair has no spread to judge it by).
    """
    xa, xb = _as_1d(a, "a"), _as_1d(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"a has {xa.size} values, b has {xb.size}: paired values need equal length")
    d = xa - xb  # [n]
    lo, hi = bootstrap_ci(d, confidence, n_resamples, seed)
    significant = d.size >= 2 and (lo > 0.0 or hi < 0.0)
    return {"mean_diff": float(d.mean()), "ci_lo": lo, "ci_hi": hi,
            "significant": bool(significant), "n": int(d.size)}
