"""Ablation ladders (multimem.ablation): expansion of a spec into rungs, its errors, the table's statistics,
and a real Snakemake build of a tiny ablation by name through to its papermill report."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from multimem.ablation import AblationError, load_spec, rungs
from multimem.evaluation.ablation_table import ablation_table, first_where, load_rows
from multimem.evaluation.report_tables import flatten
from multimem.params import load_params
from pipeline_helpers import ROOT, project_copy, run, tiny_params

SPEC = ROOT / "experiments" / "ablations" / "landmark_ablation.yaml"
V1 = ROOT / "experiments" / "landmark_v1-demo.yaml"
V2 = ROOT / "experiments" / "landmark_v2-demo.yaml"

TINY_SCALE = {  # the TINY experiment of pipeline_helpers, as dotted keys on both tasks
    "data.max_documents": 400, "data.vocab_size": 512, "data.chunk_len": 64, "data.max_chunks": 0,
    "memories.num_memories": 4, "model.memory.num_memories": 4, "memories.segment_len": 16,
    "memories.target_len": 16, "memories.builder_tokens": 64, "memories.builder_text_tokens": 32,
    "memories.builder_domains": [], "memories.queries_per_domain": 8, "memories.query_len": 16,
    "memories.recall.num_keys": 128, "memories.recall.num_values": 32, "model.vocab_size": 512,
    "model.hidden": 32, "model.heads": 2, "model.ffn": 64, "model.memory.encoder_heads": 2,
    "model.memory.encoder_ffn": 32, "pretrain.max_steps": 8, "train.seeds": [0, 1], "train.epochs": 1,
    "train.max_steps_per_epoch": 3, "train.threads": 1, "eval.bootstrap_resamples": 200,
}


def tiny_spec() -> dict:
    return {
        "base": "experiments/landmark_v1-demo.yaml",
        "scale": dict(TINY_SCALE),
        "tasks": {
            "recall": {"memories.task": "recall", "train.protocol": "selection",
                       "model.memory.assignment": "explicit", "memories.examples_train": 64,
                       "memories.examples_val": 32, "train.variants": ["oracle", "none", "memory_norm", "learned"]},
            "lm": {"memories.examples_train": 16, "memories.examples_val": 8,
                   "train.variants": ["none", "memory_norm", "learned"]},
        },
        "steps": [
            {"name": "v1", "fix": "the base"},
            {"name": "readout_scale", "fix": "exact readout", "set": {"all": {"model.memory.readout_norm": "exact"}}},
            {"name": "writes", "fix": "gradient through the writes (recall only)",
             "set": {"recall": {"train.write_grad": "differentiable"}}},
        ],
    }


def test_shipped_ablation_is_cumulative_one_step_per_rung_from_v1_to_v2():
    spec = load_spec(SPEC)
    all_rungs = rungs(spec, ROOT)
    v1, v2 = flatten(load_params(V1)), flatten(load_params(V2))
    for task in spec["tasks"]:
        ladder = [r for r in all_rungs if r.task == task]
        assert [r.step for r in ladder] == [s["name"] for s in spec["steps"]]
        first = flatten(ladder[0].params)
        setup = {**spec["scale"], **spec["tasks"][task], "experiment": ladder[0].name}
        # rung 0 is v1 itself, apart from the measuring setup and the task
        assert {k for k in v1 if v1[k] != first[k]} <= set(setup)
        for prev, cur in zip(ladder, ladder[1:]):
            a, b = flatten(prev.params), flatten(cur.params)
            diff = {k for k in a if a[k] != b[k]} - {"experiment"}
            assert diff == set(cur.changed), (cur.name, diff, cur.changed)
            assert (cur.same_as is None) == bool(cur.changed)
    # the recall ladder ends at the v2 demo's design: every model.memory / train switch but the scale keys
    last = flatten([r for r in all_rungs if r.task == "recall"][-1].params)
    design = [k for k in v2 if k.startswith(("model.memory.", "train.", "data.split", "eval.report_split"))
              and k not in spec["scale"] and not k.startswith(("model.memory.encoder", "train.variants",
                                                               "train.seeds", "train.threads"))]
    assert {k: last[k] for k in design} == {k: v2[k] for k in design}


def test_rung_names_params_and_same_as(tmp_path: Path):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments/landmark_v1-demo.yaml").write_text(V1.read_text())
    spec = tiny_spec()
    got = rungs(spec, tmp_path)
    assert [r.name for r in got] == ["recall-00-v1", "recall-01-readout_scale", "recall-02-writes",
                                     "lm-00-v1", "lm-01-readout_scale", "lm-02-writes"]
    assert got[-1].same_as == "lm-01-readout_scale" and got[-1].changed == {}
    assert got[1].changed == {"model.memory.readout_norm": "exact"}
    assert all(r.params["experiment"] == r.name for r in got if r.same_as is None)


@pytest.mark.parametrize("mutate, fragment", [
    (lambda s: s["steps"][1]["set"]["all"].update({"model.memory.readout": "exact"}),
     "steps[1] (readout_scale), task recall: key 'model.memory.readout' is not a params.yaml key"),
    (lambda s: s["steps"][1]["set"]["all"].update({"model.memory.readout_norm": "huge"}),
     "rung recall-01-readout_scale (step 'readout_scale' on task 'recall') is not a valid experiment"),
    (lambda s: s["steps"][2]["set"].update({"vision": {"train.lr": 1.0}}),
     "set: ['vision'] are not tasks; allowed: all, recall, lm"),
    (lambda s: s["steps"].append({"name": "v1", "fix": "again", "set": {"all": {"train.lr": 0.1}}}),
     "name 'v1' must be unique"),
    (lambda s: s["steps"][0].update({"set": {"all": {"train.lr": 0.1}}}),
     "the first step is the base itself and sets nothing"),
    (lambda s: s.pop("scale"), "needs exactly the keys ['base', 'scale', 'steps', 'tasks']"),
])
def test_bad_spec_names_the_step_key_and_allowed_values(tmp_path: Path, mutate, fragment):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments/landmark_v1-demo.yaml").write_text(V1.read_text())
    spec = tiny_spec()
    mutate(spec)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(AblationError) as err:
        rungs(load_spec(path), tmp_path)
    assert fragment in str(err.value)


def _row(task, index, step, **kw):
    base = {"task": task, "index": index, "step": step, "rung": f"{task}-{index:02d}-{step}", "same_as": "",
            "kind": "recall", "slot_chance": 0.125}
    return {**base, **kw}


def test_table_holm_across_the_whole_table_and_first_open_step():
    rows = [
        _row("recall", 0, "v1", bracket=0.001, bracket_p=0.5, memory_norm_sel=0.13, memory_norm_sel_p=0.4),
        _row("recall", 1, "fix_a", bracket=0.30, bracket_p=0.02, memory_norm_sel=0.5, memory_norm_sel_p=0.001),
        _row("recall", 2, "fix_b", bracket=0.70, bracket_p=0.0001, memory_norm_sel=0.9, memory_norm_sel_p=0.0001),
        {**_row("recall", 3, "noop"), "same_as": "recall-02-fix_b", "bracket": 0.70, "bracket_p": 0.0001,
         "memory_norm_sel": 0.9, "memory_norm_sel_p": 0.0001},
    ]
    df = ablation_table(rows)
    # 6 distinct tests (the repeated rung is not counted twice): p = 0.02 is the 4th smallest -> x3
    assert math.isclose(df.loc[1, "bracket_p_holm"], 0.06)
    assert not df.loc[1, "bracket_open"] and df.loc[2, "bracket_open"] and df.loc[3, "bracket_open"]
    assert df.loc[3, "bracket_p_holm"] == df.loc[2, "bracket_p_holm"]
    assert first_where(df, "recall", "bracket_open") == "fix_b"
    assert first_where(df, "recall", "memory_norm_selects") == "fix_a"
    assert first_where(df, "recall", "learned_selects") is None  # no p at all: never significant


def test_a_rung_without_results_is_named(tmp_path: Path):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments/landmark_v1-demo.yaml").write_text(V1.read_text())
    with pytest.raises(FileNotFoundError, match="rung recall-00-v1 has no readable summary"):
        load_rows(rungs(tiny_spec(), tmp_path), tmp_path / "build")


@pytest.mark.slow
def test_snakemake_builds_an_ablation_by_name(tmp_path: Path):
    repo = project_copy(tmp_path / "repo", tiny_params())
    (repo / "experiments/ablations").mkdir(exist_ok=True)
    (repo / "experiments/ablations/tiny_ablation.yaml").write_text(yaml.safe_dump(tiny_spec(), sort_keys=False))
    run(["snakemake", "--cores", "2", "reports/tiny_ablation.html"], repo)
    page = (repo / "reports/tiny_ablation.html").read_text()
    table = pd.read_csv(repo / "reports/tiny_ablation.csv")
    assert list(table["rung"]) == ["recall-00-v1", "recall-01-readout_scale", "recall-02-writes",
                                   "lm-00-v1", "lm-01-readout_scale", "lm-02-writes"]
    assert (repo / "build/ablation/tiny_ablation/recall-02-writes/metrics/recall-02-writes/summary.json").is_file()
    assert not (repo / "build/ablation/tiny_ablation/lm-02-writes").exists()  # a no-op step is not rerun
    rec = table[table["kind"] == "recall"]
    assert rec["oracle_acc"].between(0, 1).all() and rec["bracket"].notna().all()
    lm = table[table["kind"] == "lm"]
    assert lm["none_ppl"].gt(1).all() and lm["mem_effect"].notna().all()
    assert "What each v1 flaw cost" in page and "the bracket first opens at" in page and "<table" in page
    again = run(["snakemake", "--cores", "1", "reports/tiny_ablation.html"], repo)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_lm_rows_memory_helps_or_hurts_after_holm():
    rows = [_row("lm", 0, "v1", kind="lm", mem_effect=-0.08, mem_effect_p=0.3),
            _row("lm", 1, "readout_scale", kind="lm", mem_effect=-2.8, mem_effect_p=0.001),
            _row("lm", 2, "protocol", kind="lm", mem_effect=3.0, mem_effect_p=0.002)]
    df = ablation_table(rows)
    assert list(df["memory_hurts"]) == [False, True, False]
    assert list(df["memory_helps"]) == [False, False, True]
    assert first_where(df, "lm", "memory_helps") == "protocol"
