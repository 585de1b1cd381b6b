"""Tables and computed conclusions for the report notebook (notebooks/landmark_report.ipynb).

Inputs are the evaluate stage's outputs: summary.json (flat keys `<variant>.<metric>.<stat>`, the paired
per-example comparisons `cmp.<a>-<b>.<metric>.<stat>`, the landmark choices `<variant>.choice_*`) and the
plot tables in metrics/<experiment>/plots/. `validity` decides whether a run can compare landmarks at all;
`conclusions` draws none otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .stats import t_interval

V1_NOTE = pd.DataFrame(
    [("memory_norm", 105.4, 7, 70_418_440), ("learned", 105.6, 7, 70_422_536)],
    columns=["landmark", "best val PPL (note)", "epoch", "params"],
).set_index("landmark").assign(**{"selection accuracy (note)": ["20% (4/20), chance 25%", ""]})


def v1_beside_note(params: dict[str, Any], runs: list[dict[str, Any]]) -> pd.DataFrame | None:
    """The note's v1 numbers (V1_NOTE) beside this run's for its v1 landmarks: best val PPL (mean over seeds),
    best epoch, parameter count and the memory builder's selection accuracy (top-1, queries chosen right)
    of the randomly initialised model, as the note's side experiment measured it, and after training;
    None unless this experiment runs v1's protocol (train.protocol 'lm') with a v1 landmark."""
    if params["train"]["protocol"] != "lm":
        return None

    def chosen(mine: list[dict[str, Any]], key: str) -> str:
        sel = [(r.get(key), r.get("sel_queries")) for r in mine]
        return ", ".join(f"{100 * a:.0f}% ({round(a * q)}/{q})" for a, q in sel if a is not None and q)

    rows = []
    for lm in V1_NOTE.index:
        mine = [r for r in runs if r.get("variant") == lm]
        if not mine:
            continue
        rows.append({"landmark": lm, "best val PPL (note)": V1_NOTE.loc[lm, "best val PPL (note)"],
                     "best val PPL (this run)": round(float(np.mean([r["val_ppl"] for r in mine])), 2),
                     "epoch (note)": V1_NOTE.loc[lm, "epoch"],
                     "epoch (this run)": ", ".join(str(r.get("best_epoch")) for r in mine),
                     "params (note)": V1_NOTE.loc[lm, "params"], "params (this run)": mine[0].get("params"),
                     "selection at random init (note)": "20% (4/20)" if lm == "memory_norm" else "",
                     "selection at random init (this run)": chosen(mine, "sel_initial_top1"),
                     "selection trained (this run)": chosen(mine, "sel_trained_top1")})
    return pd.DataFrame(rows).set_index("landmark") if rows else None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are kept as values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def params_diff(a: Path, b: Path) -> pd.DataFrame:
    """Keys whose values differ between two params files: [parameter, <a stem>, <b stem>]."""
    fa, fb = (flatten(yaml.safe_load(Path(p).read_text())) for p in (a, b))
    rows = [(k, fa.get(k, "—"), fb.get(k, "—")) for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)]
    return pd.DataFrame(rows, columns=["parameter", Path(a).stem, Path(b).stem]).set_index("parameter")


def _stats(summary: dict[str, Any]) -> pd.DataFrame:
    """summary.json -> rows (variant, metric) with columns mean, std, ci_lo, ci_hi, n."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in summary.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] == "diff":
            continue
        rows.setdefault((parts[0], parts[1]), {})[parts[2]] = value
    if not rows:
        return pd.DataFrame(columns=["mean", "std", "ci_lo", "ci_hi", "n"])
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index = pd.MultiIndex.from_tuples(df.index, names=["variant", "metric"])
    return df


def ppl_table(summary: dict[str, Any], params: dict[str, Any]) -> pd.DataFrame:
    """Perplexity metrics per variant: 'mean [ci_lo, ci_hi]' strings, one column per metric."""
    df = _stats(summary)
    df = df[[("ppl" in m) for m in df.index.get_level_values("metric")]]
    if df.empty:
        return df
    from multimem.training.loop import ppl_text  # deferred: torch is not needed for the other tables

    def text(r: pd.Series) -> str:
        lo, hi = r.get("ci_lo"), r.get("ci_hi")
        if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):  # one seed: no interval in the summary
            return f"{ppl_text(r['mean'])} (one seed: no interval)"
        return f"{ppl_text(r['mean'])} [{ppl_text(lo)}, {ppl_text(hi)}]"

    cell = df.apply(text, axis=1)
    return cell.unstack("metric").reindex(params["train"]["variants"]).dropna(how="all")


def selection_table(sel: pd.DataFrame, memories: dict[str, Any] | None = None) -> pd.DataFrame | None:
    """Memory-builder selection accuracy per (variant, model, k): each seed's accuracy, their mean with a
    Student-t interval over seeds (the same queries answered by several seeds are not pooled as independent
    trials), and the chance of a constant predictor from the class sizes (the k largest domains' share)."""
    if sel.empty:
        return None
    sizes = sorted((memories or {}).get("queries", {}).get("per_domain", {}).values(), reverse=True)
    rows = []
    for (variant, model, k), g in sel.groupby(["variant", "model", "k"], sort=False):
        iv = t_interval(g["acc"].to_numpy())
        chance = sum(sizes[:int(k)]) / sum(sizes) if sizes else float(g["chance"].iloc[0])
        rows.append((variant, model, f"top-{k}", ", ".join(f"{100 * a:.1f}" for a in g["acc"]), 100 * iv.mean,
                     f"[{100 * iv.lo:.1f}, {100 * iv.hi:.1f}]" if iv.n > 1 else "one seed", 100 * chance))
    cols = ["variant", "model", "k", "per seed %", "mean %", "t-interval %", "chance %"]
    return pd.DataFrame(rows, columns=cols).set_index(["variant", "model", "k"]).round(1)


def bracket_table(bracket: pd.DataFrame, split: str) -> pd.DataFrame | None:
    """Mean target PPL on `split` per variant and mixer, and the share of the oracle–none gap the
    landmark recovers: (none − landmark) / (none − oracle)."""
    bracket = bracket[bracket["split"] == split] if not bracket.empty else bracket
    if bracket.empty:
        return None
    piv = bracket.groupby(["variant", "mixer"], sort=False)["ppl"].mean().unstack()
    if {"oracle", "none", "landmark"} <= set(piv.columns):
        gap = piv["none"] - piv["oracle"]
        piv["recovered"] = ((piv["none"] - piv["landmark"]) / gap.where(gap.abs() > 1e-9)).round(3)
    return piv.round(3)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _get(summary: dict[str, Any], key: str, default: float = float("nan")) -> Any:
    return summary.get(key, default)


def chance_level(params: dict[str, Any]) -> float | None:
    """Chance accuracy of the scored tokens: 1/num_values on the recall task (a guess among the values);
    None where no closed form applies (continuation, lm)."""
    if params["train"]["protocol"] == "selection" and params["memories"]["task"] == "recall":
        return 1.0 / params["memories"]["recall"]["num_values"]
    return None


def validity(params: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """Can this run compare landmarks at all? Only if the TRAINED oracle beats the TRAINED no-memory
    reference on the scored tokens' accuracy (per-example paired comparison over test examples and seeds,
    cmp.oracle-none.correct) by at least eval.min_bracket, with its interval excluding 0.

    Returns {"can_compare": bool, "why": str, "gap", "ci_lo", "ci_hi", "oracle", "none", "chance",
    "failed_runs"} (numbers NaN where absent)."""
    ev, failed = params["eval"], summary.get("failed_runs") or {}
    chance = chance_level(params)
    out: dict[str, Any] = {"chance": chance, "failed_runs": failed, "min_bracket": ev["min_bracket"]}
    key = "cmp.oracle-none.correct"
    out.update(gap=_get(summary, f"{key}.effect"), ci_lo=_get(summary, f"{key}.ci_lo"),
               ci_hi=_get(summary, f"{key}.ci_hi"), oracle=_get(summary, "oracle.correct.mean"),
               none=_get(summary, "none.correct.mean"))
    if params["train"]["protocol"] == "lm":
        out.update(can_compare=False, why="train.protocol 'lm' has no true slot per example, so no trained "
                   "oracle/none bracket exists: nothing here shows that choosing the right memory can matter")
    elif f"{key}.effect" not in summary:
        out.update(can_compare=False, why="the bracket was not trained: train.variants needs both 'oracle' and "
                   "'none' (and at least one seed whose oracle start converged)")
    elif not (out["ci_lo"] > 0 and out["gap"] >= ev["min_bracket"]):
        out.update(can_compare=False, why=f"the trained oracle beats trained none by {_pct(out['gap'])} "
                   f"(CI [{_pct(out['ci_lo'])}, {_pct(out['ci_hi'])}]), short of eval.min_bracket "
                   f"{_pct(ev['min_bracket'])} with an interval excluding 0")
    else:
        out.update(can_compare=True, why=f"the trained oracle beats trained none by {_pct(out['gap'])} "
                   f"(CI [{_pct(out['ci_lo'])}, {_pct(out['ci_hi'])}]) >= eval.min_bracket "
                   f"{_pct(ev['min_bracket'])}: reading the right memory decides the answer")
    return out


def validity_text(params: dict[str, Any], summary: dict[str, Any]) -> str:
    """The report's first section, as markdown."""
    v = validity(params, summary)
    task = "lm" if params["train"]["protocol"] == "lm" else params["memories"]["task"]
    lines = [f"- Task: **{task}**" + (f"; chance accuracy of the scored tokens {_pct(v['chance'])} "
                                      f"(1/{params['memories']['recall']['num_values']} values)"
                                      if v["chance"] is not None else "") + "."]
    if v["oracle"] == v["oracle"]:  # not NaN
        lines.append(f"- Trained oracle: {_pct(v['oracle'])} of the scored tokens right; trained none: "
                     f"{_pct(v['none'])} (means over seeds).")
    split = params["eval"]["report_split"]
    ceiling = summary.get(f"none.{split}_ppl_plain_context.mean")
    if ceiling is not None:  # continuation: what the true segment gives a model that reads it as plain context
        lines.append(f"- Plain-context ceiling: the trained `none` model reaches {split} perplexity {ceiling:.2f} "
                     f"with the true segment prepended as ordinary context, against "
                     f"{summary.get(f'none.{split}_ppl.mean', float('nan')):.2f} without it and "
                     f"{summary.get(f'oracle.{split}_ppl.mean', float('nan')):.2f} for the trained oracle "
                     "reading it from memory.")
    if v["failed_runs"]:
        lines.append(f"- Failed (oracle start missed train.oracle_gate, never used): "
                     f"{', '.join(sorted(v['failed_runs']))}.")
    verdict = "**This run can compare landmarks**" if v["can_compare"] else "**This run cannot compare landmarks**"
    lines.append(f"- {verdict}: {v['why']}." + ("" if v["can_compare"] else
                                                 " No conclusion about landmarks is drawn below."))
    return "\n".join(lines)


def landmark_table(params: dict[str, Any], summary: dict[str, Any]) -> pd.DataFrame:
    """Per variant: accuracy of the scored tokens and mean loss (Student-t over seeds), the landmark's choice of
    slot per test example (accuracy and balanced accuracy with their cluster-bootstrap CIs and permutation p,
    chance from the class sizes), and the collapse diagnostics."""
    conf = int(100 * params["eval"]["confidence"])

    def ci(key: str, pct: bool = True) -> str:
        m, lo, hi = (_get(summary, f"{key}.{s}") for s in ("mean", "ci_lo", "ci_hi"))
        if m != m:
            return ""
        f = _pct if pct else (lambda x: f"{x:.3f}")
        return f"{f(m)} [{f(lo)}, {f(hi)}]" if lo == lo else f"{f(m)} (one seed: no interval)"

    rows = []
    for v in params["train"]["variants"]:
        if f"{v}.correct.mean" not in summary:
            continue
        rows.append({"variant": v, f"accuracy {conf}% CI": ci(f"{v}.correct"),
                     "loss (nats)": ci(f"{v}.loss", pct=False),
                     "slot chosen right": ci(f"{v}.choice_acc"),
                     "balanced": ci(f"{v}.choice_bal_acc"),
                     "chance (bal.)": _pct(_get(summary, f"{v}.choice_bal_acc.chance"))
                     if f"{v}.choice_bal_acc.chance" in summary else "",
                     "p vs chance": f"{_get(summary, f'{v}.choice_bal_acc.p'):.4f}"
                     if f"{v}.choice_bal_acc.p" in summary else "",
                     "top-slot share": _pct(_get(summary, f"{v}.choice_collapse.top_share"))
                     if f"{v}.choice_collapse.top_share" in summary else "",
                     "choice entropy / ln N": f"{_get(summary, f'{v}.choice_collapse.entropy_norm'):.3f}"
                     if f"{v}.choice_collapse.entropy_norm" in summary else ""})
    return pd.DataFrame(rows).set_index("variant") if rows else pd.DataFrame()


def comparisons_table(summary: dict[str, Any], metric: str = "correct") -> pd.DataFrame:
    """Every paired comparison on `metric`: effect (a − b) with its interval first, then p and Holm-adjusted p."""
    rows = []
    for key, value in summary.items():
        parts = key.split(".")
        if parts[0] != "cmp" or parts[2:] != [metric, "effect"]:
            continue
        base = f"cmp.{parts[1]}.{metric}"
        a, b = parts[1].split("-", 1)
        rows.append({"a": a, "b": b, "effect (a − b)": value, "ci_lo": summary.get(f"{base}.ci_lo"),
                     "ci_hi": summary.get(f"{base}.ci_hi"), "p": summary.get(f"{base}.p"),
                     "p (Holm)": summary.get(f"{base}.p_holm"), "significant": summary.get(f"{base}.significant"),
                     "seeds": summary.get(f"{base}.n_seeds"), "examples": summary.get(f"{base}.n_examples")})
    return pd.DataFrame(rows).set_index(["a", "b"]).round(4) if rows else pd.DataFrame()


def conclusions(params: dict[str, Any], summary: dict[str, Any]) -> str:
    """Markdown bullet list of landmark findings, each derived from the numbers (never typed in); empty of
    landmark claims when `validity` says the run cannot compare landmarks."""
    v = validity(params, summary)
    if not v["can_compare"]:
        return f"_No landmark conclusions: {v['why']}._"
    conf = int(100 * params["eval"]["confidence"])
    n_seeds = len(params["train"]["seeds"])
    lines = []
    for lm in params["train"]["variants"]:
        if f"{lm}.choice_bal_acc.mean" not in summary:
            continue
        acc, lo, hi = (summary[f"{lm}.correct.{s}"] for s in ("mean", "ci_lo", "ci_hi")) \
            if f"{lm}.correct.ci_lo" in summary else (summary[f"{lm}.correct.mean"], float("nan"), float("nan"))
        bal, blo, bhi, chance, p = (summary.get(f"{lm}.choice_bal_acc.{s}", float("nan"))
                                    for s in ("mean", "ci_lo", "ci_hi", "chance", "p"))
        where = "above" if blo > chance else ("below" if bhi < chance else "not distinguishable from")
        rec = summary.get(f"{lm}.recovered_correct.mean")
        rec_text = (f"; recovers {_pct(rec)} [{_pct(summary[f'{lm}.recovered_correct.ci_lo'])}, "
                    f"{_pct(summary[f'{lm}.recovered_correct.ci_hi'])}] of the oracle–none gap" if rec is not None else "")
        lines.append(f"- `{lm}`: {_pct(acc)} of the scored tokens right ({conf}% CI over seeds "
                     f"[{_pct(lo)}, {_pct(hi)}]){rec_text}; chooses the true slot with balanced accuracy "
                     f"{_pct(bal)} [{_pct(blo)}, {_pct(bhi)}], {where} chance {_pct(chance)} (permutation p {p:.4f}); "
                     f"top-slot share {_pct(summary.get(f'{lm}.choice_collapse.top_share', float('nan')))}.")
    cmp = comparisons_table(summary)
    if not cmp.empty:
        for (a, b), r in cmp.iterrows():
            if a in ("oracle",) and b == "none":
                continue
            verdict = "**different**" if r["significant"] else "not distinguishable"
            lines.append(f"- `{a}` − `{b}`: {r['effect (a − b)']:+.3f} accuracy, CI [{r['ci_lo']:+.3f}, "
                         f"{r['ci_hi']:+.3f}], Holm-adjusted p {r['p (Holm)']:.4f}: {verdict} "
                         f"(paired over {int(r['examples'])} test examples × {int(r['seeds'])} seeds).")
    if n_seeds < 5:
        lines.append(f"- With {n_seeds} seeds the between-seed intervals have {n_seeds - 1} degrees of freedom: "
                     "wide, and the paired tests are conservative; a difference not called here may still exist.")
    return "\n".join(lines) if lines else "_No landmark variant was evaluated._"


def manifest_summary(prepared: dict[str, Any], memories: dict[str, Any]) -> pd.DataFrame:
    """Source, licence, split sizes and leakage check of the prepared data and memory banks."""
    keep = ("source", "licence", "license", "tokenizer", "split", "counts", "leakage", "leaky",
            "n_documents", "n_tokens", "n_chunks", "domains")
    rows = [(f"prepare.{k}", v) for k, v in flatten(prepared).items() if k.split(".")[0] in keep]
    rows += [(f"build_memories.{k}", v) for k, v in flatten(memories).items()
             if k.split(".")[0] not in ("files", "params")]
    return pd.DataFrame(rows, columns=["item", "value"]).set_index("item")
