"""What DVC compares across experiment branches, at paths every experiment shares:

    metrics/headline.json           the `metrics:` of dvc.yaml: a handful of readable keys built from
                                    summary.json by `headline` (one function per section in SECTIONS)
    metrics/<table>.csv             copies of the COMPARED plot tables (the `plots:` of dvc.yaml)

`dvc metrics diff A B` and `dvc plots diff A B` pair files by path, so these never carry the experiment
name; the detail (metrics/<experiment>/summary.json, runs/, plots/) stays where the report reads it.

Headline keys (absent when not computed):
    experiment, metric               the experiment; the main metric (MAIN_METRIC by protocol and task)
    bracket.{oracle,uniform,none}    the main metric of the trained reference variants; without them, of
                                     every variant with the mixer swapped in at test time (mean over variants)
    bracket.gap                      how much better the oracle slot is than no memory (the room landmarks have)
    <variant>.<key>                  the main metric, mean over seeds, under a key that does not name the
                                     split (ppl, value_acc), so `dvc metrics diff` pairs v1's val with v2's test
    <variant>.selection_top1         top-1 accuracy of the trained landmark on the held-out domain queries
    <variant>.task_selection         share of report-split task examples whose chosen slot is the true one
                                     (<variant>: the landmark variants; oracle, uniform, none are the bracket)
    verdict                          the landmarks better / worse than the baseline on the main metric (paired
                                     over seeds, significant at eval.confidence), or why the run cannot compare
                                     landmarks (report_tables.validity, the report's own judgement)
To add a key, add a section: a function (params, summary) -> dict, listed in SECTIONS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from multimem.atomic import write_json_atomic, write_text_atomic
from multimem.evaluation.report_data import to_csv
from multimem.evaluation.report_tables import validity
from multimem.model.config import LANDMARKS, REFERENCE_MIXERS

HEADLINE = "headline.json"
COMPARED = ("learning_curves", "ppl_bracket", "selection_accuracy")

# train.protocol 'lm', or the memories.task of protocol 'selection' -> (main metric of a run record,
# "{split}" = eval.report_split, reference mixers add "_<mixer>"; its headline key; higher is better)
MAIN_METRIC: dict[str, tuple[str, str, bool]] = {
    "lm": ("{split}_ppl", "ppl", False),
    "continuation": ("{split}_ppl", "ppl", False),
    "recall": ("{split}_acc", "value_acc", True),
}


def main_metric(params: dict[str, Any]) -> tuple[str, str, bool]:
    """(metric name in summary.json, headline key, higher is better) of the experiment's protocol/task."""
    task = "lm" if params["train"]["protocol"] == "lm" else params["memories"].get("task", "continuation")
    if task not in MAIN_METRIC:
        raise ValueError(f"protocol/task {task!r} has no main metric in multimem.evaluation.headline.MAIN_METRIC")
    name, key, higher = MAIN_METRIC[task]
    return name.format(split=params["eval"]["report_split"]), key, higher


def _mean(summary: dict[str, Any], variant: str, metric: str) -> float | None:
    return summary.get(f"{variant}.{metric}.mean")


def _variants(params: dict[str, Any], summary: dict[str, Any], among: tuple[str, ...]) -> list[str]:
    return [v for v in params["train"]["variants"] if v in among and any(k.startswith(f"{v}.") for k in summary)]


def _identity(params: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    return {"experiment": params["experiment"], "metric": main_metric(params)[0]}


def _bracket(params: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    (metric, _, higher), out = main_metric(params), {}
    trained = _variants(params, summary, REFERENCE_MIXERS)
    for mixer in REFERENCE_MIXERS:
        if trained:
            values = [m] if (m := _mean(summary, mixer, metric)) is not None else []
        else:
            means = [_mean(summary, v, f"{metric}_{mixer}") for v in _variants(params, summary, LANDMARKS)]
            values = [m for m in means if m is not None]
        if values:
            out[mixer] = round(sum(values) / len(values), 6)
    if "oracle" in out and "none" in out:
        out["gap"] = round((out["oracle"] - out["none"]) * (1 if higher else -1), 6)
    return {"bracket": out} if out else {}


def _per_variant(params: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    (metric, key, _), out = main_metric(params), {}
    for v in _variants(params, summary, LANDMARKS):
        row = {key: _mean(summary, v, metric), "selection_top1": _mean(summary, v, "sel_trained_top1"),
               "task_selection": _mean(summary, v, "task_sel_acc"),
               "task_selection_balanced": _mean(summary, v, "choice_bal_acc")}
        if row := {k: x for k, x in row.items() if x is not None}:
            out[v] = row
    return out


def _verdict(params: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """'a > b' / 'a < b' where the paired per-example comparison on the scored tokens' accuracy (cmp.*, Holm-
    corrected) calls a difference, 'a ~ b' where it does not; only when the run can compare landmarks."""
    if not (v := validity(params, summary))["can_compare"]:
        return {"verdict": f"landmarks not compared: {v['why'].split(':')[0]}"}
    said = []
    for key in sorted(summary):
        parts = key.split(".")
        if parts[0] != "cmp" or parts[2:] != ["correct", "significant"] or parts[1] == "oracle-none":
            continue
        a, b = parts[1].split("-", 1)
        rel = (">" if summary[f"cmp.{parts[1]}.correct.effect"] > 0 else "<") if summary[key] else "~"
        said.append(f"{a} {rel} {b}")
    return {"verdict": "; ".join(said) or "no landmark variant evaluated"}


SECTIONS: tuple[Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]], ...] = (
    _identity, _bracket, _per_variant, _verdict)


def headline(params: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """The headline metrics of one experiment (module docstring) from its summary.json."""
    out: dict[str, Any] = {}
    for section in SECTIONS:
        out.update(section(params, summary))
    return out


def write_compared(metrics: Path, params: dict[str, Any], summary: dict[str, Any],
                   tables: dict[str, list[dict[str, Any]]]) -> None:
    """metrics/headline.json and metrics/<table>.csv for the COMPARED tables, each written atomically."""
    write_json_atomic(metrics / HEADLINE, headline(params, summary))
    for name in COMPARED:
        write_text_atomic(metrics / f"{name}.csv", to_csv(name, tables.get(name, [])))
