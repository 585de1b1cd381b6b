"""The evaluate stage: every trained (variant, seed) of train.variants × train.seeds found under
models/ -> metrics/<experiment>/ (written whole, atomically; params["experiment"] names it):

    runs/<variant>-seed<k>.json   one flat record per run (keys below)
    examples.csv                  one row per (variant, seed, report-split example) of the selection protocol:
                                  true_slot, chosen_slot (-1: no landmark), loss, tokens, correct (fraction of
                                  the scored tokens predicted right: recall value accuracy)
    summary.json                  multimem.evaluation.aggregate.build_summary: <variant>.<metric>.{mean,std,ci_lo,
                                  ci_hi,n} (Student-t over seeds); with per-example results (selection protocol)
                                  cmp.<a>-<b>.<metric>.{effect,ci_lo,ci_hi,p,p_holm,significant} (paired over
                                  examples and seeds, Holm-corrected), <landmark>.choice_* (selection of the slot
                                  per test example, collapse), recovered fractions; without them (lm protocol)
                                  diff.<variant>-<baseline>.<metric>.{...} over seeds, baseline memory_norm;
                                  failed_runs
    plots/*.csv                   multimem.evaluation.report_data.TABLES

Run record (absent keys: not computed for this run):
    variant, seed, experiment, protocol, report_split, params, best_epoch, epochs_run
    {val,test}_loss, {val,test}_ppl   the run's own landmark under the train protocol (perplexity.py);
                                      no test keys for lm data without a test split
    <report_split>_ppl_<mixer>        selection protocol: reference mixers of eval.mixers (oracle, uniform, none)
    top_slot_true, mix_max_weight     selection protocol, report split, own landmark: fraction of target
                                      tokens whose head-averaged top memory is the true slot; mean max weight
    memory_gate                       mean over heads of sigmoid(γ_h), the memory readout's share
    sel_<model>_top<k>[_ci_lo|_ci_hi|_p_value]   selection accuracy (selection.py) of the trained and of
                                      the initial model; sel_chance_top<k>, sel_queries, sel_slots
    sel_<model>_domain_<Domain>       top-1 accuracy of one domain's queries
    selection                         why selection accuracy was skipped (reference-mixer variants)
    mixers                            why reference mixers were not evaluated (lm protocol)
Records hold no timings, so the same params and models give byte-identical outputs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from multimem.evaluation.aggregate import build_summary
from multimem.evaluation.headline import write_compared
from multimem.atomic import atomic_dir, write_json_atomic, write_text_atomic
from multimem.model.config import LANDMARKS
from multimem.evaluation.perplexity import lm_perplexity, plain_context_perplexity, selection_perplexity
from multimem.evaluation.report_data import TABLES, accuracy_rows, confusion_rows, learning_curve, to_csv
from multimem.evaluation.runs import Run, RunError, find_runs, initial_model, load_trained
from multimem.evaluation.selection import Builder, selection_accuracy
from multimem.integrity import verify_manifest
from multimem.training.batches import LMChunks, SelectionExamples
from multimem.training.device import configure_backend, resolve_device

SPLITS = ("val", "test")
EXAMPLES = "examples.csv"
SEL_MODELS = ("trained", "initial")
BASELINE = "memory_norm"


@dataclass(frozen=True)
class Paths:
    data: Path = Path("data")
    base: Path = Path("models/base")
    models: Path = Path("models")
    metrics: Path = Path("metrics")


@dataclass
class Inputs:
    """The evaluation data, loaded once: PPL splits of the train protocol, the builder, domain names."""

    splits: dict[str, LMChunks | SelectionExamples]
    builder: Builder | None
    domain_names: list[str]

    @classmethod
    def load(cls, params: dict[str, Any], data: Path, need_builder: bool) -> "Inputs":
        prepared, memories = data / "prepared", data / "memories"
        lm = params["train"]["protocol"] == "lm"
        verify_manifest(prepared, stage="prepare")
        if need_builder or not lm:
            verify_manifest(memories, stage="build_memories")
        if lm:
            splits = {s: LMChunks.load(prepared / f"lm_{s}.npy") for s in SPLITS}
        else:
            splits = {s: SelectionExamples.load(memories / f"selection_{s}.npz") for s in SPLITS}
        builder = Builder.load(memories / "builder.npz") if need_builder else None
        names = json.loads((prepared / "domains.json").read_text(encoding="utf-8"))
        return cls(splits, builder, names)


@dataclass
class RunResult:
    record: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {t: [] for t in TABLES})
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # selection_report per model
    examples: dict[str, Any] | None = None  # per report-split example (selection protocol), see per_example


def metric_key(name: str) -> str:
    """A domain name as a metric-name part ([A-Za-z0-9_]+)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "domain"


def _perplexities(res: RunResult, model: torch.nn.Module, params: dict[str, Any], inputs: Inputs,
                  device: torch.device) -> None:
    t, ev, rec = params["train"], params["eval"], res.record
    report = ev["report_split"]
    refs = [m for m in ev["mixers"] if m != "landmark"]
    if t["protocol"] == "lm" and refs:
        rec["mixers"] = f"reference mixers {refs} need train.protocol 'selection' (a true slot per example)"
    for split in SPLITS:
        if t["protocol"] == "lm":
            r = lm_perplexity(model, inputs.splits[split], t["batch_size"], t["eval_memory"], device, f"{split} ppl")
            results = None if r is None else {"landmark": r}
        else:
            mixers = ["landmark"] + (refs if split == report else [])
            results = selection_perplexity(model, inputs.splits[split], t["batch_size"], mixers, device,
                                           f"{split} ppl", t["eval_memory"])
        for mixer, r in (results or {}).items():
            res.tables["ppl_bracket"].append({"variant": rec["variant"], "seed": rec["seed"], "mixer": mixer,
                                              "split": split, "ppl": r.ppl})
            if mixer != "landmark":  # test-time mixer swaps: a diagnostic, not the trained bracket
                rec[f"{split}_ppl_{mixer}"] = r.ppl
                if r.acc is not None:
                    rec[f"{split}_acc_{mixer}"] = r.acc
                continue
            rec[f"{split}_loss"], rec[f"{split}_ppl"] = r.loss, r.ppl
            if r.acc is not None:
                rec[f"{split}_acc"] = r.acc
            if split == report and r.examples is not None:
                res.examples = r.examples
                chosen = r.examples["chosen_slot"]
                if (chosen >= 0).all():  # the landmark's own choice of slot per test example
                    rec["task_sel_acc"] = float((chosen == r.examples["true_slot"]).mean())
            if split == report and r.top_slot_true is not None:
                rec["top_slot_true"], rec["mix_max_weight"] = r.top_slot_true, r.mix_max_weight
    if (t["protocol"] == "selection" and params["memories"]["task"] == "continuation"
            and rec["variant"] == "none"):  # the ceiling: the true segment as ordinary context
        r = plain_context_perplexity(model, inputs.splits[report], t["batch_size"], device)
        if r is not None:
            rec[f"{report}_ppl_plain_context"], rec[f"{report}_acc_plain_context"] = r.ppl, r.acc


def _selection(res: RunResult, run: Run, model: torch.nn.Module, params: dict[str, Any], inputs: Inputs,
               base: Path, device: torch.device) -> None:
    ev, rec = params["eval"], res.record
    if run.variant not in LANDMARKS or inputs.builder is None:
        rec["selection"] = f"skipped: {run.variant!r} is a reference mixer, it has no landmark scores"
        return
    for name in SEL_MODELS:
        if name == "trained":
            m = model
        elif params["train"]["init_from"] == "oracle":
            m = initial_model(model.cfg, run.seed, run.path.parent.parent / "start" / f"seed{run.seed}",
                              "best.safetensors").to(device)
        else:
            m = initial_model(model.cfg, run.seed, base).to(device)
        rep = selection_accuracy(m, inputs.builder, inputs.domain_names, ev["top_k"], ev["confidence"],
                                 ev["seed"], device, f"selection ({name})")
        res.reports[name] = rep
        res.tables["selection_accuracy"] += accuracy_rows(run.variant, run.seed, name, rep, ev["top_k"])
        for k in ev["top_k"]:
            top = rep[f"top{k}"]
            rec[f"sel_{name}_top{k}"] = top["acc"]
            rec.update({f"sel_{name}_top{k}_{s}": top[s] for s in ("ci_lo", "ci_hi", "p_value")})
            rec[f"sel_chance_top{k}"] = top["chance"]
        for domain, acc in rep["per_domain"].items():
            rec[f"sel_{name}_domain_{metric_key(domain)}"] = acc["acc"]
    rec["sel_queries"], rec["sel_slots"] = rep["n_queries"], rep["n_slots"]


def evaluate_run(run: Run, params: dict[str, Any], inputs: Inputs, base: Path, device: torch.device) -> RunResult:
    """Everything evaluate computes for one run (module docstring)."""
    model = load_trained(run).to(device)
    summary = run.summary() or {}
    res = RunResult({"variant": run.variant, "seed": run.seed, "experiment": params["experiment"],
                     "protocol": params["train"]["protocol"], "report_split": params["eval"]["report_split"],
                     "params": model.num_parameters(),
                     **{k: summary[k] for k in ("best_epoch", "epochs_run") if k in summary}})
    _perplexities(res, model, params, inputs, device)
    res.record["memory_gate"] = float(torch.sigmoid(model.memory_layer.attention.gate.detach().float()).mean())
    _selection(res, run, model, params, inputs, base, device)
    res.tables["learning_curves"] = learning_curve(run)
    return res


def summary_metrics(params: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    """The metrics summary.json aggregates, in order, those present in at least one record."""
    ev = params["eval"]
    refs = [m for m in ev["mixers"] if m != "landmark"]
    names = ["val_acc", "test_acc", *(f"{ev['report_split']}_acc_{m}" for m in refs), "task_sel_acc",
             "val_ppl", "test_ppl", *(f"{ev['report_split']}_ppl_{m}" for m in refs),
             f"{ev['report_split']}_ppl_plain_context", f"{ev['report_split']}_acc_plain_context",
             "top_slot_true", "mix_max_weight", "memory_gate",
             *(f"sel_{m}_top{k}" for m in SEL_MODELS for k in ev["top_k"])]
    return [n for n in names if any(n in r for r in records)]


def evaluate(params: dict[str, Any], paths: Paths = Paths()) -> dict[str, Any]:
    """The evaluate stage; returns {"records", "summary", "missing", "out"}."""
    t, ev = params["train"], params["eval"]
    runs, missing = find_runs(paths.models, t["variants"], t["seeds"])  # first: finished runs verified
    failed = failed_runs(paths.models, t["variants"], t["seeds"])  # reported, never evaluated
    runs, missing = [r for r in runs if r.name not in failed], [m for m in missing if m not in failed]
    if not runs:
        raise RunError(f"no trained run under {paths.models}/ for train.variants {t['variants']} × seeds "
                       f"{t['seeds']}; run stage train first (`python pipeline/train.py --variant V --seed K`)")
    if missing:  # a report over fewer runs than train.variants × train.seeds is not the experiment's result
        stages = " ".join(f"train@{m.replace('-seed', '-')}" for m in missing)
        raise RunError(f"{len(missing)} run(s) of train.variants × train.seeds not finished under {paths.models}/ "
                       f"(no manifest.json): {', '.join(missing)}; train them first (`dvc repro {stages}`)")
    need_builder = any(r.variant in LANDMARKS for r in runs)
    if need_builder:  # selection accuracy of the initial model needs the base LM
        verify_manifest(paths.base, stage="pretrain")
    device = resolve_device(t["device"])
    configure_backend(device, t["threads"])
    inputs = Inputs.load(params, paths.data, need_builder)
    results = [evaluate_run(run, params, inputs, paths.base, device)
               for run in tqdm(runs, desc="evaluate", disable=None)]
    records = [r.record for r in results]
    variants = [r["variant"] for r in records]
    baseline = BASELINE if BASELINE in variants else variants[0]
    examples = examples_frame(results)
    per_example = not examples.empty  # selection protocol: paired per-example statistics (cmp.*) replace diff.*
    summary = build_summary(records, summary_metrics(params, records), None if per_example else baseline,
                            ev["confidence"], ev["bootstrap_resamples"], ev["seed"],
                            examples=examples if per_example else None)
    summary["failed_runs"] = failed  # <variant>-seed<k> -> why (oracle start missed train.oracle_gate)
    tables = {name: [row for r in results for row in r.tables[name]] for name in TABLES}
    for variant in dict.fromkeys(variants):
        for model in SEL_MODELS:
            reps = [r.reports[model] for r in results if r.record["variant"] == variant and model in r.reports]
            tables["selection_confusion"] += confusion_rows(variant, model, reps)
    out = paths.metrics / params["experiment"]
    with atomic_dir(out) as tmp:
        for r in results:
            write_json_atomic(tmp / "runs" / f"{r.record['variant']}-seed{r.record['seed']}.json", r.record)
        write_json_atomic(tmp / "summary.json", summary)
        write_text_atomic(tmp / EXAMPLES, examples.to_csv(index=False, float_format="%.6g"))
        for name, rows in tables.items():
            write_text_atomic(tmp / "plots" / f"{name}.csv", to_csv(name, rows))
    write_compared(paths.metrics, params, summary, tables)  # metrics/headline.json, what DVC diffs across branches
    return {"records": records, "summary": summary, "missing": missing, "failed": failed, "out": out}


def failed_runs(models: Path, variants: list[str], seeds: list[int]) -> dict[str, str]:
    """<variant>-seed<k> -> why, for runs that were not trained because their seed's oracle start failed."""
    out = {}
    for v in variants:
        for s in seeds:
            path = models / v / f"seed{s}" / "manifest.json"  # a failed run's manifest names why
            try:
                reason = json.loads(path.read_text(encoding="utf-8")).get("failed")
            except (OSError, ValueError, AttributeError):
                reason = None  # no readable record of a failure: find_runs judges the folder
            if reason:
                out[f"{v}-seed{s}"] = reason
    return out


def examples_frame(results: list[RunResult]) -> pd.DataFrame:
    """One row per (variant, seed, report-split example): the per-example results statistics start from."""
    cols = ["variant", "seed", "example", "true_slot", "chosen_slot", "loss", "tokens", "correct"]
    frames = [pd.DataFrame({"variant": r.record["variant"], "seed": r.record["seed"],
                            "example": np.arange(len(r.examples["loss"])), **r.examples})[cols]
              for r in results if r.examples is not None]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
