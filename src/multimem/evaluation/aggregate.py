"""Aggregate per-run metrics over seeds into one flat summary for ``dvc metrics diff``.

A run is a flat dict ``{"variant": "learned", "seed": 0, "test_ppl": 41.2, ...}``. The summary
holds, per variant and metric, ``<variant>.<metric>.{mean,std,ci_lo,ci_hi,n}`` and, per variant
against a baseline over the seeds both share,
``diff.<variant>-<baseline>.<metric>.{mean_diff,ci_lo,ci_hi,significant,n}``.
Floats are rounded to 6 significant digits so diffs between branches stay readable.
Variant and metric names are ``[A-Za-z0-9_]+`` so every key splits unambiguously on ``.``.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jsonschema

from multimem.evaluation.stats import paired_difference, summarize

NAME = r"[A-Za-z0-9_]+"
_NAME_RE = re.compile(NAME)

SUMMARY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "multimem metrics summary (metrics/<experiment>/summary.json)",
    "type": "object",
    "minProperties": 1,
    "patternProperties": {
        rf"^{NAME}\.{NAME}\.(mean|std|ci_lo|ci_hi)$": {"type": "number"},
        rf"^{NAME}\.{NAME}\.n$": {"type": "integer", "minimum": 1},
        rf"^diff\.{NAME}-{NAME}\.{NAME}\.(mean_diff|ci_lo|ci_hi)$": {"type": "number"},
        rf"^diff\.{NAME}-{NAME}\.{NAME}\.significant$": {"type": "boolean"},
        rf"^diff\.{NAME}-{NAME}\.{NAME}\.n$": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": False,
}


class AggregateError(ValueError):
    """Runs that cannot be aggregated (bad names, duplicates, non-finite values)."""


class SummaryError(ValueError):
    """A summary that does not follow SUMMARY_SCHEMA."""


def _round(x: Any) -> Any:
    """Floats to 6 significant digits; ints and bools unchanged."""
    return float(f"{x:.6g}") if isinstance(x, float) else x


def _check_name(kind: str, name: Any) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name == "diff":
        raise AggregateError(f"{kind}={name!r}: must match {NAME} and not be 'diff'")


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


def aggregate_runs(
    runs: Sequence[dict[str, Any]], metrics: Sequence[str],
    confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0,
) -> dict[str, Any]:
    """``<variant>.<metric>.{mean,std,ci_lo,ci_hi,n}`` over seeds (bootstrap CI of the mean)."""
    out: dict[str, Any] = {}
    for metric in metrics:
        for variant, column in _values(runs, metric).items():
            if column:
                stats = summarize([column[s] for s in sorted(column)], confidence, n_resamples, seed)
                out.update({f"{variant}.{metric}.{k}": _round(v) for k, v in stats.items()})
    return dict(sorted(out.items()))


def paired_differences(
    runs: Sequence[dict[str, Any]], metrics: Sequence[str], baseline: str,
    confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0,
) -> dict[str, Any]:
    """``diff.<variant>-<baseline>.<metric>.{mean_diff,ci_lo,ci_hi,significant,n}``.

    Pairs runs by seed (only seeds both variants have); mean_diff = variant - baseline.
    """
    _check_name("baseline", baseline)
    if not any(run.get("variant") == baseline for run in runs):
        raise AggregateError(f"baseline={baseline!r}: no run has this variant")
    out: dict[str, Any] = {}
    for metric in metrics:
        table = _values(runs, metric)
        base = table.get(baseline, {})
        for variant, column in table.items():
            seeds = sorted(set(column) & set(base))
            if variant == baseline or not seeds:
                continue
            d = paired_difference([column[s] for s in seeds], [base[s] for s in seeds],
                                  confidence, n_resamples, seed)
            out.update({f"diff.{variant}-{baseline}.{metric}.{k}": _round(v) for k, v in d.items()})
    return dict(sorted(out.items()))


def build_summary(
    runs: Sequence[dict[str, Any]], metrics: Sequence[str], baseline: str | None = None,
    confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0,
) -> dict[str, Any]:
    """aggregate_runs plus (when baseline is given) paired_differences, validated."""
    summary = aggregate_runs(runs, metrics, confidence, n_resamples, seed)
    if baseline is not None:
        summary.update(paired_differences(runs, metrics, baseline, confidence, n_resamples, seed))
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
