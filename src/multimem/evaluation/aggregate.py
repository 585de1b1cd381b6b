"""Aggregate per-run metrics and per-example results into one flat summary for ``dvc metrics diff``.

A run is a flat dict ``{"variant": "learned", "seed": 0, "test_ppl": 41.2, ...}``. The summary holds
(statistics: multimem.evaluation.stats; why these: its module docstring and issue 12):

- per variant and run metric, over seeds: ``<variant>.<metric>.{mean,std,ci_lo,ci_hi,n}`` (Student-t
  interval; std/ci absent for one seed);
- per variant against a baseline, paired by seed: ``diff.<variant>-<baseline>.<metric>.{mean_diff,ci_lo,
  ci_hi,p,p_holm,significant,n}`` (paired t over seeds; Holm across every diff.* entry; these are
  whole-test-set metrics, so they ignore test-set uncertainty: the cmp.* entries are the primary test);

and, given the per-example frame (one row per variant, seed, example; see stats):

- ``<variant>.<m>.{mean,ci_lo,ci_hi,n}`` for each per-example metric m (loss, correct): Student-t interval
  over the n seeds' means;
- ``cmp.<a>-<b>.<m>.{effect,ci_lo,ci_hi,se,p,p_holm,significant,n_seeds,n_examples}``: paired per-example
  comparisons pooled over seeds (``stats.compare_variants``) of each landmark against none and oracle, of
  every two landmarks, and oracle against none (the bracket); Holm across all of them;
- ``<landmark>.choice_acc.{mean,ci_lo,ci_hi,n,n_seeds,chance,p}``, ``<landmark>.choice_bal_acc.{...}``
  and ``<landmark>.choice_collapse.{top_share,entropy_nats,entropy_norm}``: the landmark's own choice of
  slot per test example (``stats.selection_stats``; n = unique queries);
- ``<landmark>.recovered_<m>.{mean,ci_lo,ci_hi}``: (landmark - none) / (oracle - none), only when the
  bracket is open.

Non-finite statistics (an interval over one seed, the p-value of a zero-spread comparison) are left out
rather than written as NaN; ``significant`` is always written. Floats are rounded to 6 significant digits
so diffs between branches stay readable. Variant and metric names are ``[A-Za-z0-9_]+`` (not ``diff`` or
``cmp``) so every key splits unambiguously on ``.``.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jsonschema
import numpy as np
import pandas as pd

from multimem.evaluation.stats import (
    compare_variants, holm, paired_difference, recovered_fraction_frame, selection_arrays, selection_stats,
    summarize, t_interval, example_matrix,
)

NAME = r"[A-Za-z0-9_]+"
_NAME_RE = re.compile(NAME)
RESERVED = ("diff", "cmp")
REFERENCE_NONE, REFERENCE_ORACLE = "none", "oracle"
EXAMPLE_METRICS = ("loss", "correct")
VARIANT_NUMBERS = "mean|std|ci_lo|ci_hi|chance|p|top_share|entropy_nats|entropy_norm"
CMP_NUMBERS = ("effect", "ci_lo", "ci_hi", "se", "p", "p_holm")

SUMMARY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "multimem metrics summary (metrics/<experiment>/summary.json)",
    "type": "object",
    "minProperties": 1,
    "properties": {
        "failed_runs": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "patternProperties": {
        rf"^{NAME}\.{NAME}\.({VARIANT_NUMBERS})$": {"type": "number"},
        rf"^{NAME}\.{NAME}\.(n|n_seeds)$": {"type": "integer", "minimum": 1},
        rf"^diff\.{NAME}-{NAME}\.{NAME}\.(mean_diff|ci_lo|ci_hi|p|p_holm)$": {"type": "number"},
        rf"^diff\.{NAME}-{NAME}\.{NAME}\.significant$": {"type": "boolean"},
        rf"^diff\.{NAME}-{NAME}\.{NAME}\.n$": {"type": "integer", "minimum": 1},
        rf"^cmp\.{NAME}-{NAME}\.{NAME}\.({'|'.join(CMP_NUMBERS)})$": {"type": "number"},
        rf"^cmp\.{NAME}-{NAME}\.{NAME}\.significant$": {"type": "boolean"},
        rf"^cmp\.{NAME}-{NAME}\.{NAME}\.(n_seeds|n_examples)$": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": False,
}


class AggregateError(ValueError):
    """Runs that cannot be aggregated (bad names, duplicates, non-finite values)."""


class SummaryError(ValueError):
    """A summary that does not follow SUMMARY_SCHEMA."""


def _round(x: Any) -> Any:
    """Floats to 6 significant digits; ints and bools unchanged (numpy scalars as Python types)."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    return float(f"{float(x):.6g}") if isinstance(x, (float, np.floating)) else x


def _put(out: dict[str, Any], prefix: str, stats: dict[str, Any]) -> None:
    """out[prefix.k] = rounded v for each finite (or non-float) statistic."""
    for k, v in stats.items():
        if isinstance(v, (float, np.floating)) and not math.isfinite(v):
            continue
        out[f"{prefix}.{k}"] = _round(v)


def _check_name(kind: str, name: Any) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in RESERVED:
        raise AggregateError(f"{kind}={name!r}: must match {NAME} and not be one of {RESERVED}")


def _values(runs: Sequence[dict[str, Any]], metric: str) -> dict[str, dict[int, float]]:
    """variant -> seed -> value of ``metric``; runs without the metric (absent or None) are skipped."""
    _check_name("metric", metric)
    table: dict[str, dict[int, float]] = {}
    for run in runs:
        variant, seed = run.get("variant"), run.get("seed")
        _check_name("variant", variant)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise AggregateError(f"variant {variant!r}: seed={seed!r} must be an integer")
        column = table.setdefault(variant, {})
        if seed in column:
            raise AggregateError(f"variant {variant!r} seed {seed}: duplicate run for metric {metric!r}")
        value = run.get(metric)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise AggregateError(f"variant {variant!r} seed {seed}: {metric}={value!r} is not a finite number")
        column[seed] = float(value)
    return table


def aggregate_runs(runs: Sequence[dict[str, Any]], metrics: Sequence[str], confidence: float = 0.95) -> dict[str, Any]:
    """``<variant>.<metric>.{mean,std,ci_lo,ci_hi,n}`` over seeds (Student-t interval; one seed: mean, n)."""
    out: dict[str, Any] = {}
    for metric in metrics:
        for variant, column in _values(runs, metric).items():
            if column:
                _put(out, f"{variant}.{metric}", summarize([column[s] for s in sorted(column)], confidence))
    return dict(sorted(out.items()))


def paired_differences(
    runs: Sequence[dict[str, Any]], metrics: Sequence[str], baseline: str, confidence: float = 0.95,
) -> dict[str, Any]:
    """``diff.<variant>-<baseline>.<metric>.{mean_diff,ci_lo,ci_hi,p,p_holm,significant,n}``.

    Pairs runs by seed (only seeds both variants have); mean_diff = variant - baseline; paired t over seeds
    (``stats.paired_difference``). p_holm: Holm (1979) across every comparison returned here;
    significant = p_holm < 1 - confidence with >= 2 pairs and non-zero spread.
    """
    _check_name("baseline", baseline)
    if not any(run.get("variant") == baseline for run in runs):
        raise AggregateError(f"baseline={baseline!r}: no run has this variant")
    found: list[tuple[str, dict[str, Any]]] = []
    for metric in metrics:
        table = _values(runs, metric)
        base = table.get(baseline, {})
        for variant, column in table.items():
            seeds = sorted(set(column) & set(base))
            if variant == baseline or not seeds:
                continue
            d = paired_difference([column[s] for s in seeds], [base[s] for s in seeds], confidence)
            found.append((f"diff.{variant}-{baseline}.{metric}", d))
    p_holm = holm([d["p"] for _, d in found]) if found else []
    out: dict[str, Any] = {}
    for (prefix, d), ph in zip(found, p_holm):
        d = {**d, "p_holm": float(ph), "significant": bool(math.isfinite(ph) and ph < 1.0 - confidence)}
        _put(out, prefix, d)
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------------
# Per-example results
# --------------------------------------------------------------------------------------------------

def landmark_variants(examples: pd.DataFrame) -> list[str]:
    """Variants (in order of first appearance) that chose a slot for every example (chosen_slot >= 0)."""
    chosen = examples.groupby("variant", sort=False)["chosen_slot"].min()
    return [str(v) for v, lo in chosen.items() if lo >= 0]


def comparison_pairs(variants: Sequence[str], landmarks: Sequence[str]) -> list[tuple[str, str]]:
    """The comparisons a report makes: each landmark vs none and vs oracle, landmark vs landmark, oracle vs none."""
    pairs: list[tuple[str, str]] = []
    for lm in landmarks:
        pairs += [(lm, ref) for ref in (REFERENCE_NONE, REFERENCE_ORACLE) if ref in variants and ref != lm]
    pairs += [(a, b) for i, a in enumerate(landmarks) for b in landmarks[i + 1:]]
    if REFERENCE_ORACLE in variants and REFERENCE_NONE in variants:
        pairs.append((REFERENCE_ORACLE, REFERENCE_NONE))
    return pairs


def example_summary(
    examples: pd.DataFrame, metrics: Sequence[str] = EXAMPLE_METRICS, confidence: float = 0.95,
    n_resamples: int = 2000, seed: int = 0,
) -> dict[str, Any]:
    """The per-example part of the summary (module docstring) from the long per-example frame.

    examples: columns variant, seed, example, true_slot, chosen_slot and the ``metrics`` present;
    n_resamples: permutations and bootstrap resamples; seed: their random streams.
    """
    if examples.empty:
        return {}
    metrics = [m for m in metrics if m in examples.columns]
    variants = [str(v) for v in pd.unique(examples["variant"])]
    for v in variants:
        _check_name("variant", v)
    for m in metrics:
        _check_name("metric", m)
    out: dict[str, Any] = {}
    for v in variants:
        for m in metrics:
            values, _, _ = example_matrix(examples, m, v)  # [S, N]
            iv = t_interval(values.mean(1), confidence)
            _put(out, f"{v}.{m}", {"mean": iv.mean, "ci_lo": iv.lo, "ci_hi": iv.hi, "n": iv.n})
    landmarks = landmark_variants(examples)
    pairs = comparison_pairs(variants, landmarks)
    if pairs and metrics:
        table = compare_variants(examples, metrics, pairs, confidence, n_permutations=n_resamples, seed=seed)
        for row in table.to_dict("records"):
            _put(out, f"cmp.{row['a']}-{row['b']}.{row['metric']}",
                 {**{k: row[k] for k in CMP_NUMBERS}, "significant": bool(row["significant"]),
                  "n_seeds": int(row["n_seeds"]), "n_examples": int(row["n_examples"])})
    n_slots = int(max(examples["true_slot"].max(), examples["chosen_slot"].max()) + 1)
    for lm in landmarks:
        y, chosen, _ = selection_arrays(examples, lm)
        r = selection_stats(y, chosen, n_slots, confidence, n_resamples, seed)
        for name, key in (("acc", "choice_acc"), ("balanced", "choice_bal_acc")):
            mean = r["acc"] if name == "acc" else r["balanced_acc"]
            _put(out, f"{lm}.{key}", {"mean": mean, "ci_lo": r[f"{name}_ci_lo"], "ci_hi": r[f"{name}_ci_hi"],
                                      "n": r["n_queries"], "n_seeds": r["n_seeds"], "chance": r[f"{name}_chance"],
                                      "p": r[f"{name}_p"]})
        _put(out, f"{lm}.choice_collapse", {k: r[k] for k in ("top_share", "entropy_nats", "entropy_norm")})
        if REFERENCE_NONE in variants and REFERENCE_ORACLE in variants:
            for m in metrics:
                rec, _ = recovered_fraction_frame(examples, m, lm, REFERENCE_NONE, REFERENCE_ORACLE, confidence)
                if rec is not None:
                    _put(out, f"{lm}.recovered_{m}", {"mean": rec.fraction, "ci_lo": rec.ci_lo, "ci_hi": rec.ci_hi})
    return out


def build_summary(
    runs: Sequence[dict[str, Any]], metrics: Sequence[str], baseline: str | None = None,
    confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0,
    examples: pd.DataFrame | None = None, example_metrics: Sequence[str] = EXAMPLE_METRICS,
) -> dict[str, Any]:
    """aggregate_runs, paired_differences (when baseline is given) and example_summary (when the per-example
    frame is given), validated; keys sorted. n_resamples and seed drive the per-example permutations and
    bootstraps; the run-level statistics are exact (Student-t)."""
    summary = aggregate_runs(runs, metrics, confidence)
    if baseline is not None:
        summary.update(paired_differences(runs, metrics, baseline, confidence))
    if examples is not None:
        clash = sorted({f"{m}" for m in example_metrics} & set(metrics))
        if clash:
            raise AggregateError(f"metrics {clash} are both run metrics and per-example metrics")
        summary.update(example_summary(examples, example_metrics, confidence, n_resamples, seed))
    summary = dict(sorted(summary.items()))
    validate_summary(summary)
    return summary


def validate_summary(d: dict[str, Any]) -> None:
    """Raise SummaryError unless ``d`` follows SUMMARY_SCHEMA with finite numbers and ci_lo <= ci_hi."""
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(SUMMARY_SCHEMA).iter_errors(d))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "summary"
        raise SummaryError(f"{where}: {error.message}")
    for key, value in d.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise SummaryError(f"{key}={value!r}: not a finite number")
        if key.endswith(".ci_lo") and value > d.get(key[: -len("ci_lo")] + "ci_hi", math.inf):
            raise SummaryError(f"{key}={value!r} exceeds its ci_hi")
