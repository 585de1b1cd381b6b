"""The plot tables of metrics/<experiment>/plots/ (CSV, one row per record, columns fixed):

    learning_curves.csv      variant, seed, epoch, split, loss, ppl, acc      (train and val, per epoch; acc: val
                                                                               accuracy of the scored tokens)
    ppl_bracket.csv          variant, seed, mixer, split, ppl                 (landmark and reference mixers)
    selection_accuracy.csv   variant, seed, model, k, acc, ci_lo, ci_hi, chance   (model: initial | trained)
    selection_confusion.csv  variant, model, true_domain, predicted_domain, count (summed over seeds)
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable, Sequence

from multimem.evaluation.runs import Run

TABLES: dict[str, tuple[str, ...]] = {
    "learning_curves": ("variant", "seed", "epoch", "split", "loss", "ppl", "acc"),
    "ppl_bracket": ("variant", "seed", "mixer", "split", "ppl"),
    "selection_accuracy": ("variant", "seed", "model", "k", "acc", "correct", "n", "ci_lo", "ci_hi", "chance"),
    "selection_confusion": ("variant", "model", "true_domain", "predicted_domain", "count"),
}
CURVE_SPLITS = ("train", "val")


def _read_tsv(path: Path) -> dict[int, float]:
    """dvclive's plots/metrics/<split>/<name>.tsv (columns step, <name>; older dvclive also timestamp):
    step -> value."""
    rows = csv.DictReader(path.read_text(encoding="utf-8").splitlines(), delimiter="\t")
    return {int(r["step"]): float(r[path.stem]) for r in rows}


def learning_curve(run: Run) -> list[dict[str, Any]]:
    """Per-epoch train and val loss/ppl of a run: from train_summary.json's history, else from the
    dvclive files live/plots/metrics/{train,val}/{loss,ppl}.tsv (step k = epoch k + 1); [] if neither."""
    summary = run.summary()
    rows = []
    if summary is not None:
        for rec in summary.get("history", []):
            for split in CURVE_SPLITS:
                if f"{split}/loss" in rec:
                    rows.append({"variant": run.variant, "seed": run.seed, "epoch": int(rec["epoch"]),
                                 "split": split, "loss": rec[f"{split}/loss"], "ppl": rec[f"{split}/ppl"],
                                 "acc": rec.get(f"{split}/acc", "")})
        return rows
    folder = run.files.live / "plots" / "metrics"
    for split in CURVE_SPLITS:
        loss_path, ppl_path = folder / split / "loss.tsv", folder / split / "ppl.tsv"
        if loss_path.is_file() and ppl_path.is_file():
            loss, ppl = _read_tsv(loss_path), _read_tsv(ppl_path)
            rows += [{"variant": run.variant, "seed": run.seed, "epoch": step + 1, "split": split,
                      "loss": loss[step], "ppl": ppl[step], "acc": ""} for step in sorted(set(loss) & set(ppl))]
    return sorted(rows, key=lambda r: (r["epoch"], CURVE_SPLITS.index(r["split"])))


def accuracy_rows(variant: str, seed: int, model: str, report: dict[str, Any],
                  top_k: Sequence[int]) -> list[dict[str, Any]]:
    """selection_accuracy.csv rows of one selection_report."""
    return [{"variant": variant, "seed": seed, "model": model, "k": k, "acc": report[f"top{k}"]["acc"],
             "correct": report[f"top{k}"]["correct"], "n": report[f"top{k}"]["n"],
             "ci_lo": report[f"top{k}"]["ci_lo"], "ci_hi": report[f"top{k}"]["ci_hi"],
             "chance": report[f"top{k}"]["chance"]} for k in top_k]


def confusion_rows(variant: str, model: str, reports: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """selection_confusion.csv rows: the confusion matrices of `reports` (one per seed) summed."""
    total: dict[tuple[str, str], int] = {}
    for rep in reports:
        names = rep["domain_names"]
        for i, row in enumerate(rep["confusion"]):
            for j, count in enumerate(row):
                key = (names[i], names[j])
                total[key] = total.get(key, 0) + int(count)
    return [{"variant": variant, "model": model, "true_domain": t, "predicted_domain": p, "count": c}
            for (t, p), c in total.items()]


def to_csv(table: str, rows: Iterable[dict[str, Any]]) -> str:
    """CSV text of `rows` with the columns of TABLES[table] (header included, "\\n" line ends)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=TABLES[table], lineterminator="\n", extrasaction="raise")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
