"""Stage start (train.init_from: oracle): the oracle is trained first, gated on its validation accuracy;
a seed whose oracle start misses the gate is reported as failed, never used."""

from __future__ import annotations

import json

import pytest
import yaml

from multimem.data import build_memories, prepare
from multimem.evaluation.stage import failed_runs
from multimem.training.runs import pretrain, start, start_failure, train
from pipeline_helpers import tiny_params


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny recall experiment: prepared corpus, recall examples, a scratch base."""
    root = tmp_path_factory.mktemp("oracle_start")
    p = tiny_params(**{"pretrain.init": "scratch", "train.threads": 1, "train.batch_size": 8,
                       "memories.examples_train": 48, "memories.examples_val": 16, "memories.examples_test": 16,
                       "train.max_steps_per_epoch": 2, "train.start_steps": 3, "train.epochs": 1})
    prepare(p["data"], root / "data" / "prepared")
    build_memories(p["memories"], root / "data" / "prepared", root / "data" / "memories")
    pretrain(p, root / "data" / "prepared", root / "models" / "base")
    return root, p


def run_start(root, p, gate: float, models: str):
    p = json.loads(json.dumps(p))
    p["train"]["oracle_gate"] = gate
    info = start(p, 0, root / "data", root / "models" / "base", root / models)
    return p, info


def test_a_converged_oracle_start_is_where_every_variant_begins(workspace):
    root, p = workspace
    p, info = run_start(root, p, 0.0, "models_ok")
    assert info["init_from"] == "oracle" and info["converged"] and info["steps"] == 3
    assert info["best_val_acc"] is not None and 0.0 <= info["best_val_acc"] <= 1.0
    start_dir = root / "models_ok" / "start" / "seed0"
    assert start_failure(start_dir) is None
    summary = train(p, "learned", 0, root / "data", root / "models" / "base", root / "models_ok")
    assert "failed" not in summary and summary["steps"] == 2
    config = json.loads((root / "models_ok" / "learned" / "seed0" / "config.json").read_text())
    assert config["init"]["from"] == str(start_dir)  # started from the oracle, not from the base
    # everything but the landmark's own projection comes from the oracle start
    kept = config["from_init"]["kept"]
    assert "layers.1.attention.landmark.proj.weight" in kept and all(".landmark." in k for k in kept)


def test_the_gate_refuses_a_seed_whose_oracle_did_not_converge(workspace):
    root, p = workspace
    p, info = run_start(root, p, 1.0, "models_gate")  # 3 steps cannot reach 100% value accuracy
    assert info["converged"] is False and info["best_val_acc"] < 1.0
    reason = start_failure(root / "models_gate" / "start" / "seed0")
    assert reason is not None and "did not converge" in reason and "train.oracle_gate 1.0" in reason
    summary = train(p, "memory_norm", 0, root / "data", root / "models" / "base", root / "models_gate")
    assert summary["failed"] == reason
    run = root / "models_gate" / "memory_norm" / "seed0"
    assert not (run / "best.safetensors").exists()  # nothing that could be evaluated as a result
    assert failed_runs(root / "models_gate", ["memory_norm", "learned"], [0]) == {"memory_norm-seed0": reason}
    # the failure is recorded as the run's manifest, so the folder is finished, not missing
    assert json.loads((run / "manifest.json").read_text())["failed"] == reason


def test_a_missing_start_is_named(tmp_path):
    reason = start_failure(tmp_path / "start" / "seed3")
    assert reason is not None and "start.json is missing" in reason and "pipeline/start.py" in reason


def test_init_from_oracle_needs_the_selection_protocol():
    from multimem.params import ParamsError, validate_params

    p = tiny_params(**{"train.protocol": "lm", "train.init_from": "oracle"})
    for k, v in {"model.memory.state": "shared", "model.memory.assignment": "round_robin",
                 "train.write_grad": "detached", "train.eval_memory": "off"}.items():
        *a, b = k.split(".")
        d = p
        for x in a:
            d = d[x]
        d[b] = v
    with pytest.raises(ParamsError, match="train.init_from: 'oracle' needs the true slot"):
        validate_params(yaml.safe_load(yaml.safe_dump(p)))
