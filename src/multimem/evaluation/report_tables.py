"""Tables and computed conclusions for the report notebook (notebooks/landmark_report.ipynb).

Inputs are the evaluate stage's outputs: summary.json (flat keys `<variant>.<metric>.<stat>` and
`diff.<variant>-<baseline>.<metric>.<stat>`) and the plot tables in metrics/<experiment>/plots/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .stats import clopper_pearson

V1_NOTE = pd.DataFrame(
    [("memory_norm", 105.4, 7, 70_418_440), ("learned", 105.6, 7, 70_422_536)],
    columns=["landmark", "best val PPL (note)", "epoch", "params"],
).set_index("landmark").assign(**{"selection accuracy (note)": ["20% (4/20), chance 25%", ""]})


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

    nan = float("nan")  # one seed: no interval in the summary
    cell = df.apply(lambda r: f"{ppl_text(r['mean'])} [{ppl_text(r.get('ci_lo', nan))}, "
                              f"{ppl_text(r.get('ci_hi', nan))}]", axis=1)
    return cell.unstack("metric").reindex(params["train"]["variants"]).dropna(how="all")


def selection_table(sel: pd.DataFrame) -> pd.DataFrame | None:
    """Selection accuracy pooled over seeds (correct counts summed), with Clopper–Pearson 95% CIs."""
    if sel.empty:
        return None
    rows = []
    for (variant, model, k), g in sel.groupby(["variant", "model", "k"], sort=False):
        n, correct = int(g["n"].sum()), int(g["correct"].sum())
        lo, hi = clopper_pearson(correct, n) if n else (float("nan"), float("nan"))
        rows.append((variant, model, f"top-{k}", f"{correct}/{n}", 100 * correct / max(n, 1),
                     f"[{100 * lo:.1f}, {100 * hi:.1f}]", 100 * float(g["chance"].iloc[0])))
    cols = ["variant", "model", "k", "correct", "accuracy %", "95% CI %", "chance %"]
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


def conclusions(params: dict[str, Any], summary: dict[str, Any], sel: pd.DataFrame,
                bracket: pd.DataFrame) -> str:
    """Markdown bullet list of findings, each derived from the numbers (never typed in)."""
    lines: list[str] = []
    conf = params["eval"]["confidence"]
    split = params["eval"]["report_split"]
    metric = f"{split}_ppl"
    n_seeds = len(params["train"]["seeds"])
    for key, value in sorted(summary.items()):
        parts = key.split(".")
        if parts[0] != "diff" or parts[-1] != "significant" or parts[2] != metric:
            continue
        base = f"diff.{parts[1]}.{metric}"
        d, lo, hi = (summary.get(f"{base}.{s}", float("nan")) for s in ("mean_diff", "ci_lo", "ci_hi"))
        verdict = "**significant**" if value else "not significant"
        lines.append(f"- {split} perplexity, `{parts[1].replace('-', '` minus `')}`: {d:+.3f} "
                     f"(paired over {summary[f'{base}.n']} seeds, {int(100 * conf)}% Student-t CI "
                     f"[{lo:+.3f}, {hi:+.3f}]) — difference {verdict} at {int(100 * conf)}% (Holm-adjusted).")
    if lines and n_seeds < 5:
        lines.append(f"- With {n_seeds} seeds a seed-level t-interval has {n_seeds - 1} degrees of freedom and "
                     "ignores test-set uncertainty; the per-example comparisons (cmp.*) are the primary test.")
    table = bracket_table(bracket, split)
    if table is not None and "recovered" in table:
        gap = (table["none"] - table["oracle"]).mean()
        lines.append(f"- How much memory can help here: the oracle slot lowers {split} perplexity by "
                     f"{gap:.3f} ({_pct(gap / table['none'].mean())}) against no memory, on average over variants.")
        for v, r in table["recovered"].items():
            if pd.notna(r):
                lines.append(f"- `{v}` recovers {_pct(r)} of that gap "
                             f"(landmark {table.loc[v, 'landmark']:.2f}, none {table.loc[v, 'none']:.2f}, "
                             f"oracle {table.loc[v, 'oracle']:.2f}).")
    if not sel.empty:
        top1 = sel[(sel["k"] == 1) & (sel["model"] == "trained")]
        for v, g in top1.groupby("variant", sort=False):
            n, correct = int(g["n"].sum()), int(g["correct"].sum())
            lo, hi = clopper_pearson(correct, n, conf)
            chance = float(g["chance"].iloc[0])
            where = "above" if lo > chance else ("below" if hi < chance else "not distinguishable from")
            lines.append(f"- `{v}` selects the right domain memory for {correct}/{n} queries "
                         f"({_pct(correct / n)}, CI [{_pct(lo)}, {_pct(hi)}]): {where} chance ({_pct(chance)}).")
    return "\n".join(lines) if lines else "_No comparisons available (one variant or one seed)._"


def manifest_summary(prepared: dict[str, Any], memories: dict[str, Any]) -> pd.DataFrame:
    """Source, licence, split sizes and leakage check of the prepared data and memory banks."""
    keep = ("source", "licence", "license", "tokenizer", "split", "counts", "leakage", "leaky",
            "n_documents", "n_tokens", "n_chunks", "domains")
    rows = [(f"prepare.{k}", v) for k, v in flatten(prepared).items() if k.split(".")[0] in keep]
    rows += [(f"build_memories.{k}", v) for k, v in flatten(memories).items()
             if k.split(".")[0] not in ("files", "params")]
    return pd.DataFrame(rows, columns=["item", "value"]).set_index("item")
