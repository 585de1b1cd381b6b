"""One row per ablation rung (multimem.ablation), read from the rung's metrics/<rung>/summary.json.

Selection protocol (recall, continuation), on the rung's report split, per-example statistics of the
evaluate stage (multimem.evaluation.aggregate):
    bracket      trained oracle - trained none, accuracy of the scored tokens (cmp.oracle-none.correct:
                 paired over examples and seeds, crossed variance, df = S-1); open = positive after Holm
    <lm>_acc     the landmark's accuracy; <lm>_sel = balanced accuracy of the slot it chooses per test
                 example (bootstrap interval over examples, permutation p against chance)
lm protocol (v1's language modelling; no true slot, so no bracket):
    <v>_ppl      perplexity per variant (mean over seeds); mem_effect = none - memory_norm perplexity and
                 landmark_effect = learned - memory_norm (paired t over seeds, diff.* of the summary)
    <lm>_sel     the memory builder's held-out queries: top-1 slot accuracy (mean over seeds, t-interval),
                 p = one-sided t test against chance over seeds

Every p of the table (bracket, selection, lm effects) is Holm-corrected across the whole table
(Holm 1979): the ablation asks one family of questions. A rung whose runs failed shows them and no tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sst

from multimem.evaluation.stats import holm

LANDMARKS = ("memory_norm", "learned")
NAN = float("nan")


def _g(summary: dict[str, Any], key: str) -> float:
    v = summary.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else NAN


def task_kind(params: dict[str, Any]) -> str:
    return "lm" if params["train"]["protocol"] == "lm" else params["memories"]["task"]


def chance(params: dict[str, Any]) -> float:
    """Chance of the row's main accuracy: 1/num_values (recall); NaN where none applies."""
    if task_kind(params) == "recall":
        return 1.0 / params["memories"]["recall"]["num_values"]
    return NAN


def _t_above(mean: float, std: float, n: float, c: float) -> float:
    """One-sided p of mean > c from n seed values (Student t, df = n-1); NaN without spread or n < 2."""
    if not (n >= 2 and std > 0 and math.isfinite(mean)):
        return NAN
    t = (mean - c) / (std / math.sqrt(n))
    return float(sst.t.sf(t, df=n - 1))


def rung_row(name: str, params: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """The table row of one rung (module docstring); p columns raw, Holm comes in ablation_table."""
    kind, split = task_kind(params), params["eval"]["report_split"]
    n_slots = params["model"]["memory"]["num_memories"]
    row: dict[str, Any] = {"rung": name, "kind": kind, "split": split, "chance": chance(params),
                           "slot_chance": 1.0 / n_slots,
                           "failed": ", ".join(sorted((summary.get("failed_runs") or {}).keys()))}
    if kind == "lm":
        for v in ("none", *LANDMARKS):
            row[f"{v}_ppl"] = _g(summary, f"{v}.{split}_ppl.mean")
        for col, key in (("mem_effect", f"diff.none-memory_norm.{split}_ppl"),
                         ("landmark_effect", f"diff.learned-memory_norm.{split}_ppl")):
            row[col] = _g(summary, f"{key}.mean_diff")
            row[f"{col}_lo"], row[f"{col}_hi"] = _g(summary, f"{key}.ci_lo"), _g(summary, f"{key}.ci_hi")
            row[f"{col}_p"] = _g(summary, f"{key}.p")
        for lm in LANDMARKS:
            m, s, n = (_g(summary, f"{lm}.sel_trained_top1.{k}") for k in ("mean", "std", "n"))
            row[f"{lm}_sel"] = m
            row[f"{lm}_sel_lo"] = _g(summary, f"{lm}.sel_trained_top1.ci_lo")
            row[f"{lm}_sel_hi"] = _g(summary, f"{lm}.sel_trained_top1.ci_hi")
            row[f"{lm}_sel_p"] = _t_above(m, s, n, 1.0 / n_slots)
        return row
    key = "cmp.oracle-none.correct"
    row.update(oracle_acc=_g(summary, "oracle.correct.mean"), none_acc=_g(summary, "none.correct.mean"),
               bracket=_g(summary, f"{key}.effect"), bracket_lo=_g(summary, f"{key}.ci_lo"),
               bracket_hi=_g(summary, f"{key}.ci_hi"), bracket_p=_g(summary, f"{key}.p"))
    for lm in LANDMARKS:
        row[f"{lm}_acc"] = _g(summary, f"{lm}.correct.mean")
        for col, k in (("sel", "mean"), ("sel_lo", "ci_lo"), ("sel_hi", "ci_hi"), ("sel_p", "p")):
            row[f"{lm}_{col}"] = _g(summary, f"{lm}.choice_bal_acc.{k}")
        row[f"{lm}_top_share"] = _g(summary, f"{lm}.choice_collapse.top_share")
    return row


P_COLUMNS = ("bracket_p", "mem_effect_p", "landmark_effect_p", *(f"{lm}_sel_p" for lm in LANDMARKS))


def ablation_table(rows: Sequence[dict[str, Any]], alpha: float = 0.05) -> pd.DataFrame:
    """Rows (rung metadata + rung_row) -> DataFrame with <p>_holm columns (Holm across every finite p of
    the table) and the verdicts: bracket_open (oracle beats none after Holm), <lm>_selects (the landmark's
    slot choice beats chance after Holm), memory_helps / memory_hurts (lm: memory_norm's perplexity below /
    above none's after Holm)."""
    df = pd.DataFrame(list(rows))
    for col in P_COLUMNS:
        if col not in df:
            df[col] = NAN
    own = (df["same_as"] == "") if "same_as" in df else pd.Series(True, index=df.index)
    flat = df.loc[own, list(P_COLUMNS)].to_numpy(dtype=float).ravel()  # a repeated rung is one test, once
    adjusted = np.full_like(flat, NAN)
    finite = np.isfinite(flat)
    if finite.any():
        adjusted[finite] = holm(flat[finite])
    adjusted = adjusted.reshape(int(own.sum()), len(P_COLUMNS))
    for j, col in enumerate(P_COLUMNS):
        df[f"{col}_holm"] = NAN
        df.loc[own, f"{col}_holm"] = adjusted[:, j]
    if "same_as" in df:
        for i in df.index[~own]:
            src = df.index[df["rung"] == df.at[i, "same_as"]][0]
            for col in P_COLUMNS:
                df.at[i, f"{col}_holm"] = df.at[src, f"{col}_holm"]
    nan = pd.Series(NAN, index=df.index)

    def sig(col: str, effect: pd.Series) -> pd.Series:
        return (df[f"{col}_holm"] < alpha) & (effect > 0)

    df["bracket_open"] = sig("bracket_p", df.get("bracket", nan))
    df["memory_helps"] = sig("mem_effect_p", df.get("mem_effect", nan))
    df["memory_hurts"] = sig("mem_effect_p", -df.get("mem_effect", nan))
    for lm in LANDMARKS:
        df[f"{lm}_selects"] = sig(f"{lm}_sel_p", df.get(f"{lm}_sel", nan) - df["slot_chance"])
    return df


def load_rows(rungs: Sequence[Any], builds: str | Path) -> list[dict[str, Any]]:
    """Table rows of every rung (multimem.ablation.Rung) from builds/<rung>/metrics/<rung>/summary.json;
    a step that changes nothing on its task repeats the row of the rung that stands for it."""
    rows: list[dict[str, Any]] = []
    by_name: dict[str, dict[str, Any]] = {}
    for r in rungs:
        meta = {"task": r.task, "index": r.index, "step": r.step, "fix": r.fix,
                "changed": ", ".join(f"{k}={v}" for k, v in r.changed.items()), "same_as": r.same_as or ""}
        if r.same_as:
            row = {**by_name[r.same_as], **meta, "rung": r.name}
        else:
            path = Path(builds) / r.name / "metrics" / r.name / "summary.json"
            try:
                summary = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise FileNotFoundError(f"{path}: rung {r.name} has no readable summary ({e}); build it with "
                                        "`snakemake --cores 2 reports/<ablation>.html`") from None
            row = {**meta, **rung_row(r.name, r.params, summary)}
            by_name[r.name] = row
        rows.append(row)
    return rows


def first_where(df: pd.DataFrame, task: str, column: str) -> str | None:
    """The first step of `task` (ladder order) whose verdict `column` is True, else None."""
    hit = df[(df["task"] == task) & df[column].astype(bool)]
    return None if hit.empty else str(hit.sort_values("index").iloc[0]["step"])
