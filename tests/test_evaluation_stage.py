"""pipeline/evaluate.py end to end: tiny synthetic data files and run directories trained for a few
steps by the training code, in a temp dir; the outputs' formats, their agreement with training, and
byte-identical reruns. Both protocols: v2 selection and v1 lm (no test split, eval_memory off)."""

import csv
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from multimem.evaluation.aggregate import NAME, validate_summary
from multimem.data.manifest import write_manifest
from multimem.evaluation.runs import Run, find_runs, initial_model, load_trained
from multimem.evaluation.report_data import TABLES, learning_curve
from multimem.params import load_params
from multimem.training.runs import pretrain, train
from pipeline_helpers import BASE_PARAMS

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ["Arts", "Everyday life", "History", "Physical sciences"]
N, V = 3, 256
TINY_MODEL = dict(vocab_size=V, hidden=16, layers=2, heads=2, ffn=32)
TINY_MEMORY = dict(num_memories=N, encoder_capacity=8, encoder_layers=1, encoder_heads=2, encoder_ffn=16)


def _evaluate_main():
    spec = importlib.util.spec_from_file_location("evaluate_stage", ROOT / "pipeline" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _write_data(root: Path, lm_test_rows: int) -> None:
    rng = np.random.default_rng(0)
    prepared, memories = root / "data" / "prepared", root / "data" / "memories"
    prepared.mkdir(parents=True)
    memories.mkdir(parents=True)
    (prepared / "domains.json").write_text(json.dumps(DOMAINS))
    for split, rows in (("train", 16), ("val", 8), ("test", lm_test_rows)):
        np.save(prepared / f"lm_{split}.npy", rng.integers(0, V, size=(rows, 9), dtype=np.int32))
    write_manifest(prepared, {"stage": "prepare"})
    for split, e in (("train", 16), ("val", 6), ("test", 6)):
        slot_domain = np.stack([rng.permutation(len(DOMAINS))[:N] for _ in range(e)]).astype(np.int16)
        np.savez(memories / f"selection_{split}.npz", context=rng.integers(0, V, size=(e, N, 8), dtype=np.int32),
                 target=rng.integers(0, V, size=(e, 9), dtype=np.int32),
                 true_slot=rng.integers(0, N, size=e).astype(np.int64), slot_domain=slot_domain)
    slot_domain = np.array([3, 0, 1], dtype=np.int16)  # slot i holds domain slot_domain[i]
    query_domain = np.repeat(slot_domain, 4)
    np.savez(memories / "builder.npz", slot_tokens=rng.integers(0, V, size=(N, 16), dtype=np.int32),
             slot_domain=slot_domain, queries=rng.integers(0, V, size=(len(query_domain), 6), dtype=np.int32),
             query_domain=query_domain)
    write_manifest(memories, {"stage": "build_memories"})


def _params(root: Path, protocol: str, variants: list[str], seeds: list[int], **train_changes) -> Path:
    p = yaml.safe_load(BASE_PARAMS.read_text())
    p["experiment"] = f"tiny_{protocol}"
    p["model"].update(TINY_MODEL)
    p["model"]["memory"].update(TINY_MEMORY)
    p["memories"].update(num_memories=N, task="continuation")  # the synthetic files are continuation-shaped
    p["data"]["vocab_size"] = V
    p["pretrain"]["init"] = "scratch"
    p["train"].update(variants=variants, seeds=seeds, epochs=2, patience=1, batch_size=4, max_steps_per_epoch=2,
                      threads=1, device="cpu", init_from="base", **train_changes)
    p["eval"].update(top_k=[1, 2], bootstrap_resamples=200)
    if protocol == "lm":  # v1's protocol switches
        p["data"].update(split="shuffled_chunks", test_fraction=0)
        p["memories"]["examples_test"] = 0
        p["model"]["layernorm"] = "shared"
        p["model"]["memory"].update(state="shared", readout_norm="v1", relevance="sequence_mean", empty="zero_score",
                                    assignment="round_robin", landmark_norm="sum", score_scale="none",
                                    encoder_keys="last_write")
        p["train"].update(protocol="lm", eval_memory="off", write_grad="detached")
        p["eval"].update(report_split="val", mixers=["landmark", "oracle"])
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def _train_all(root: Path, params_path: Path) -> dict:
    params = load_params(params_path)
    pretrain(params, root / "data" / "prepared", root / "models" / "base")
    for variant in params["train"]["variants"]:
        for seed in params["train"]["seeds"]:
            train(params, variant, seed, root / "data", root / "models" / "base", root / "models")
    return params


def _run_evaluate(root: Path, params_path: Path, metrics: str) -> Path:
    code = _evaluate_main()(["--params", str(params_path), "--data", str(root / "data"), "--base",
                             str(root / "models" / "base"), "--models", str(root / "models"),
                             "--metrics", str(root / metrics)])
    assert code == 0
    return root / metrics


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def selection_stage(tmp_path_factory):
    torch.use_deterministic_algorithms(True)
    root = tmp_path_factory.mktemp("selection")
    _write_data(root, lm_test_rows=8)
    params_path = _params(root, "selection", ["memory_norm", "learned", "hsa_encoder", "oracle"], [0, 1])
    params = _train_all(root, params_path)
    first = _run_evaluate(root, params_path, "metrics") / params["experiment"]
    again = _run_evaluate(root, params_path, "metrics_again") / params["experiment"]
    return root, params, first, again


def test_selection_outputs_have_the_contract_formats(selection_stage):
    root, params, out, _ = selection_stage
    names = sorted(_files(out))
    runs = [f"runs/{v}-seed{s}.json" for v in ("memory_norm", "learned", "hsa_encoder", "oracle") for s in (0, 1)]
    assert names == sorted(runs + ["summary.json", "examples.csv"] + [f"plots/{t}.csv" for t in TABLES])
    summary = json.loads((out / "summary.json").read_text())
    validate_summary(summary)
    for key in ("learned.test_ppl.mean", "learned.val_ppl.ci_hi", "oracle.test_ppl.n", "learned.test_ppl_oracle.mean",
                "hsa_encoder.sel_trained_top1.mean", "learned.sel_initial_top2.std", "learned.top_slot_true.mean",
                "learned.correct.mean", "cmp.memory_norm-learned.correct.effect", "cmp.learned-oracle.loss.p_holm",
                "cmp.memory_norm-learned.correct.significant", "learned.choice_bal_acc.mean",
                "learned.choice_collapse.top_share"):
        assert key in summary, key
    assert not any(k.startswith("diff.") for k in summary)  # seed-level diffs only without per-example results
    examples = _csv(out / "examples.csv")  # one row per (variant, seed, test example)
    assert len(examples) == 4 * 2 * 6
    assert {r["chosen_slot"] for r in examples if r["variant"] == "oracle"} == {"-1"}  # no landmark
    assert all(0 <= int(r["chosen_slot"]) < N for r in examples if r["variant"] == "learned")
    assert all(0 <= float(r["correct"]) <= 1 and int(r["tokens"]) == 8 for r in examples)
    assert not any(k.startswith("oracle.sel_") for k in summary)
    for f in runs:
        rec = json.loads((out / f).read_text())
        assert all(not isinstance(v, (list, dict)) for v in rec.values())  # flat
        assert all(re.fullmatch(NAME, k) for k in rec)
        assert rec["test_ppl"] > 1 and {"test_ppl_oracle", "test_ppl_uniform", "test_ppl_none"} <= set(rec)
        assert 0 <= rec["top_slot_true"] <= 1 and 1 / N <= rec["mix_max_weight"] <= 1
    oracle = json.loads((out / "runs/oracle-seed0.json").read_text())
    assert "reference mixer" in oracle["selection"] and not any(k.startswith("sel_") for k in oracle)
    assert oracle["top_slot_true"] == 1.0 and oracle["test_ppl"] == pytest.approx(oracle["test_ppl_oracle"])
    learned = json.loads((out / "runs/learned-seed1.json").read_text())
    assert learned["sel_chance_top1"] == pytest.approx(1 / N) and learned["sel_queries"] == 4 * N
    assert {"sel_trained_domain_Physical_sciences", "sel_initial_domain_Arts"} <= set(learned)


def test_selection_tables(selection_stage):
    root, params, out, _ = selection_stage
    for table, columns in TABLES.items():
        with open(out / "plots" / f"{table}.csv", newline="") as f:
            assert tuple(next(csv.reader(f))) == columns
    accuracy = _csv(out / "plots/selection_accuracy.csv")
    assert len(accuracy) == 3 * 2 * 2 * 2  # landmark variants × seeds × (trained, initial) × k
    confusion = _csv(out / "plots/selection_confusion.csv")
    assert len(confusion) == 3 * 2 * N * N
    assert sum(int(r["count"]) for r in confusion if r["variant"] == "learned" and r["model"] == "trained") == 2 * 4 * N
    assert {r["true_domain"] for r in confusion} == {"Physical sciences", "Arts", "Everyday life"}
    bracket = _csv(out / "plots/ppl_bracket.csv")
    assert len(bracket) == 8 * (2 + 3)  # runs × (landmark val, test + oracle, uniform, none on test)
    curves = _csv(out / "plots/learning_curves.csv")
    summaries = [Run(v, s, root / "models" / v / f"seed{s}").summary() for v, s in
                 {(r["variant"], int(r["seed"])) for r in bracket}]
    assert len(curves) == 2 * sum(s["epochs_run"] for s in summaries)


def test_val_loss_equals_the_best_val_loss_of_training(selection_stage):
    root, params, out, _ = selection_stage
    for rec in (json.loads(p.read_text()) for p in (out / "runs").glob("*.json")):
        summary = Run(rec["variant"], rec["seed"], root / "models" / rec["variant"] / f"seed{rec['seed']}").summary()
        assert rec["val_loss"] == pytest.approx(summary["best_val_loss"], rel=1e-6)
        assert rec["best_epoch"] == summary["best_epoch"]


def test_two_evaluations_are_byte_identical(selection_stage):
    _, _, first, again = selection_stage
    assert _files(first) == _files(again)


def test_learning_curve_from_dvclive_matches_train_summary(selection_stage, tmp_path):
    root = selection_stage[0]
    run = Run("learned", 0, root / "models" / "learned" / "seed0")
    from_summary = learning_curve(run)
    copy = tmp_path / "seed0"
    copy.mkdir()
    (copy / "config.json").write_bytes((run.path / "config.json").read_bytes())
    live = copy / "live"
    for tsv in (run.path / "live").rglob("*.tsv"):
        (live / tsv.relative_to(run.path / "live")).parent.mkdir(parents=True, exist_ok=True)
        (live / tsv.relative_to(run.path / "live")).write_bytes(tsv.read_bytes())
    from_dvclive = learning_curve(Run("learned", 0, copy))
    assert len(from_dvclive) == len(from_summary) > 0
    for a, b in zip(from_dvclive, from_summary):
        assert {k: a[k] for k in ("epoch", "split")} == {k: b[k] for k in ("epoch", "split")}
        assert a["loss"] == pytest.approx(b["loss"]) and a["ppl"] == pytest.approx(b["ppl"])


def test_missing_runs_are_listed_and_none_found_is_a_clear_error(selection_stage, tmp_path, capsys):
    root = selection_stage[0]
    found, missing = find_runs(root / "models", ["learned", "hsa_mean"], [0, 7])
    assert [r.name for r in found] == ["learned-seed0"]
    assert missing == ["learned-seed7", "hsa_mean-seed0", "hsa_mean-seed7"]
    with pytest.raises(SystemExit) as exit_:
        _evaluate_main()(["--params", str(root / "params.yaml"), "--data", str(root / "data"),
                          "--models", str(tmp_path), "--metrics", str(tmp_path / "m")])
    assert exit_.value.code == 2 and "no trained run" in capsys.readouterr().err


@pytest.fixture(scope="module")
def lm_stage(tmp_path_factory):
    torch.use_deterministic_algorithms(True)
    root = tmp_path_factory.mktemp("lm")
    _write_data(root, lm_test_rows=0)  # shuffled_chunks: no test split
    params_path = _params(root, "lm", ["learned"], [3], lr=1e-9)  # training barely moves the weights
    params = _train_all(root, params_path)
    return root, params, _run_evaluate(root, params_path, "metrics") / params["experiment"]


def test_v1_lm_protocol_reports_val_only(lm_stage):
    root, params, out = lm_stage
    rec = json.loads((out / "runs/learned-seed3.json").read_text())
    assert rec["protocol"] == "lm" and rec["val_ppl"] > 1
    assert not any(k.startswith("test_") for k in rec) and "top_slot_true" not in rec
    assert "selection" in rec["mixers"]  # reference mixers need the selection protocol
    summary = json.loads((out / "summary.json").read_text())
    validate_summary(summary)
    assert "learned.val_ppl.mean" in summary and not any(".test_" in k for k in summary)
    assert [r["mixer"] + r["split"] for r in _csv(out / "plots/ppl_bracket.csv")] == ["landmarkval"]
    best = Run("learned", 3, root / "models/learned/seed3").summary()["best_val_loss"]
    assert rec["val_loss"] == pytest.approx(best, rel=1e-6)


def test_initial_model_is_the_model_training_started_from(lm_stage):
    root = lm_stage[0]
    run = Run("learned", 3, root / "models/learned/seed3")
    trained = load_trained(run).state_dict()
    start = initial_model(run.config(), 3, root / "models/base").state_dict()
    other_seed = initial_model(run.config(), 4, root / "models/base").state_dict()
    assert trained.keys() == start.keys()
    for name in trained:  # lr 1e-9: a few AdamW steps move each weight by ~1e-9
        assert torch.allclose(trained[name], start[name], atol=1e-6), name
    ml = run.config().memory_layer
    landmark = f"layers.{ml}.attention.landmark.proj.weight"  # drawn from the run's seed, not copied from the base
    assert not torch.allclose(start[landmark], other_seed[landmark], atol=1e-3)
    rec = json.loads((lm_stage[2] / "runs/learned-seed3.json").read_text())
    assert rec["sel_trained_top1"] == rec["sel_initial_top1"]
