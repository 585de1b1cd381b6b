"""params.yaml validation: schema + cross-field rules, readable errors, presets, cli_main exit codes."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_helpers import BASE_PARAMS
from multimem.params import SCHEMA_PATH, ParamsError, UserError, load_params, schema, validate_params

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "experiments").glob("*.yaml"))
VALID = load_params(BASE_PARAMS)  # main's preset, never the checkout's params.yaml
DELETE = object()
VARIANTS = "memory_norm, learned, hsa_mean, hsa_encoder, oracle, uniform, none"


def hf_folder(config: dict[str, Any] | None) -> Callable[[Path], str]:
    """A pretrain.init value pointing at a local folder holding `config` as config.json (None: no file)."""
    def make(tmp: Path) -> str:
        folder = tmp / "ckpt"
        folder.mkdir()
        if config is not None:
            (folder / "config.json").write_text(json.dumps(config))
        return f"hf:{folder}"
    return make


def changed(changes: dict[str, Any], tmp: Path) -> dict:
    """A copy of VALID with dotted-path `changes` applied (DELETE removes; callables get `tmp`)."""
    d = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = d
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value(tmp) if callable(value) else value
    return d


NEOX = {"model_type": "gpt_neox", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 512, "vocab_size": 4096}

BAD = [
    pytest.param({"colour": "red"}, ["unknown key 'colour' in the top level", "allowed: experiment, scale"],
                 id="unknown-key-top-level"),
    pytest.param({"model.memory.topk": 1}, ["unknown key 'model.memory.topk' in model.memory", "top_k"],
                 id="unknown-key-nested"),
    pytest.param({"train.patience": DELETE}, ["missing key train.patience in train"], id="missing-key"),
    pytest.param({"model": [1, 2]}, ["model: [1, 2] is a list; expected object"], id="section-not-mapping"),
    pytest.param({"model.hidden": "128"}, ["model.hidden: '128' is a string; expected integer", "plain number: 128"],
                 id="string-for-int"),
    pytest.param({"model.layers": 2.0}, ["model.layers: 2.0 is a number; expected integer"], id="float-for-int"),
    pytest.param({"train.lr": "1e-4"}, ["train.lr", "expected number", "plain number: 0.0001"],
                 id="yaml-1e-4-is-a-string"),
    pytest.param({"train.eval_memory": True}, ["train.eval_memory: True is a boolean", "allowed: off, on", '"on"'],
                 id="unquoted-on"),
    pytest.param({"train.batch_size": 0}, ["train.batch_size: 0 is out of range; allowed: 1 <= value <= 65536"],
                 id="below-minimum"),
    pytest.param({"eval.confidence": 1.0}, ["eval.confidence: 1.0 is out of range; allowed: 0 < value < 1"],
                 id="above-exclusive-maximum"),
    pytest.param({"data.val_fraction": -0.1}, ["data.val_fraction: -0.1 is out of range"], id="negative-fraction"),
    pytest.param({"train.lr": math.nan}, ["train.lr: nan is not a finite number"], id="nan"),
    pytest.param({"train.variants": ["memory_norm", "hsa_max"]},
                 [f"train.variants[1]: 'hsa_max' is not allowed; allowed: {VARIANTS}"], id="unknown-landmark"),
    pytest.param({"model.memory.readout_norm": "v2"},
                 ["model.memory.readout_norm: 'v2' is not allowed; allowed: v1, exact"], id="unknown-switch-value"),
    pytest.param({"eval.mixers": ["landmark", "best"]}, ["eval.mixers[1]", "landmark, oracle, uniform, none"],
                 id="unknown-mixer"),
    pytest.param({"train.variants": []}, ["train.variants: [] has too few items", f"at least 1 of {VARIANTS}"],
                 id="empty-variants"),
    pytest.param({"train.variants": ["learned", "learned"]}, ["train.variants", "repeats 'learned'"],
                 id="duplicate-variants"),
    pytest.param({"train.seeds": [0, -1]}, ["train.seeds[1]: -1 is out of range; allowed: 0 <= value"],
                 id="negative-seed"),
    pytest.param({"train.seeds": [1, 1]}, ["train.seeds", "repeats 1"], id="duplicate-seeds"),
    pytest.param({"train.seeds": 0}, ["train.seeds: 0 is an integer; expected array"], id="seeds-not-a-list"),
    pytest.param({"train.seeds": []}, ["train.seeds: [] has too few items"], id="empty-seeds"),
    pytest.param({"pretrain.init": "pythia"}, ["pretrain.init: 'pythia' is not allowed",
                                               "scratch, pretrain, a string matching ^hf:.+"], id="unknown-init"),
    pytest.param({"experiment": "my exp"}, ["experiment: 'my exp' does not match"], id="bad-experiment-name"),
    pytest.param({"model.memory.top_k": 12},
                 ["model.memory.top_k: 12 exceeds model.memory.num_memories (8)", "1..8"], id="top-k-above-n"),
    pytest.param({"memories.num_memories": 10},
                 ["memories.num_memories: 10 differs from model.memory.num_memories (8)"], id="memories-mismatch"),
    pytest.param({"model.hidden": 130}, ["model.hidden: 130 is not divisible by model.heads (4)"],
                 id="hidden-not-divisible"),
    pytest.param({"model.memory.encoder_heads": 3},
                 ["model.memory.encoder_heads: 3 does not divide", "= 32", "allowed: 1, 2, 4, 8, 16, 32"],
                 id="encoder-heads-not-divisor"),
    pytest.param({"model.rotary_pct": 0.1}, ["model.rotary_pct", "= 3 rotary dims", "even"], id="odd-rotary-dims"),
    pytest.param({"model.memory_layer": 2}, ["model.memory_layer: 2", "allowed: 0..1"], id="memory-layer-missing"),
    pytest.param({"model.memory.assignment": "round_robin"},
                 ["model.memory.assignment: 'round_robin' is not allowed with train.protocol 'selection'",
                  "allowed: explicit"], id="selection-with-round-robin"),
    pytest.param({"train.protocol": "lm"},
                 ["model.memory.assignment: 'explicit' requires train.protocol 'selection'",
                  "allowed with 'lm': round_robin", "train.write_grad: 'differentiable'"], id="lm-with-explicit"),
    pytest.param({"train.protocol": "lm", "model.memory.assignment": "round_robin",
                  "train.write_grad": "detached", "train.variants": ["learned", "oracle"]},
                 ["train.variants: 'oracle' needs the true slot", "allowed with 'lm': learned"], id="lm-with-oracle"),
    pytest.param({"data.source": "text_dir"}, ["data.text_dir: '' is empty"], id="text-dir-empty"),
    pytest.param({"data.source": "text_dir", "data.text_dir": "/nonexistent/corpus"},
                 ["data.text_dir: '/nonexistent/corpus' is not a folder"], id="text-dir-missing"),
    pytest.param({"data.source": "pile", "data.max_documents": 0}, ["data.max_documents: 0", "whole Pile"],
                 id="pile-unbounded"),
    pytest.param({"data.vocab_size": 8192}, ["data.vocab_size: 8192 exceeds model.vocab_size (4096)", "<= 4096"],
                 id="bpe-vocab-above-model"),
    pytest.param({"data.tokenizer": "pythia"}, ["model.vocab_size: 4096 is smaller than the pythia tokenizer",
                                                ">= 50277"], id="pythia-tokenizer-small-model-vocab"),
    pytest.param({"data.val_fraction": 0.5, "data.test_fraction": 0.5},
                 ["data.val_fraction + data.test_fraction: 0.5 + 0.5 = 1", "allowed: a sum < 1"],
                 id="fractions-sum-to-one"),
    pytest.param({"data.split": "shuffled_chunks", "memories.task": "continuation"},
                 ["data.test_fraction: 0.1 with data.split 'shuffled_chunks'", "data.split: 'shuffled_chunks' is not "
                  "allowed with train.protocol 'selection'"], id="shuffled-chunks-with-test-split"),
    pytest.param({"data.test_fraction": 0}, ["eval.report_split: 'test' needs a test split", "allowed: val",
                                             "memories.examples_test: 1000 but there are no test documents"],
                 id="report-test-without-test-split"),
    pytest.param({"eval.top_k": [1, 12]}, ["eval.top_k: 12 exceeds model.memory.num_memories (8)"],
                 id="eval-top-k-above-n"),
    pytest.param({"pretrain.init": "pretrain", "pretrain.epochs": 0}, ["pretrain.epochs: 0 with pretrain.init 'pretrain'"],
                 id="pretrain-zero-epochs"),
    pytest.param({"pretrain.init": "hf:not a hub id"}, ["neither a local folder nor a hub id"], id="hf-bad-hub-id"),
    pytest.param({"pretrain.init": hf_folder({**NEOX, "model_type": "llama"})},
                 ["pretrain.init", "model_type 'llama'", "allowed: 'gpt_neox'"], id="hf-folder-not-gpt-neox"),
    pytest.param({"pretrain.init": hf_folder(None)}, ["pretrain.init", "config.json"], id="hf-folder-no-config"),
    pytest.param({"pretrain.init": hf_folder({**NEOX, "hidden_size": 64})},
                 ["model.hidden: 128 differs from hidden_size = 64"], id="hf-folder-shape-mismatch"),
]


@pytest.mark.parametrize("changes, fragments", BAD)
def test_bad_params_name_key_value_and_allowed(changes: dict, fragments: list[str], tmp_path: Path) -> None:
    with pytest.raises(ParamsError) as err:
        validate_params(changed(changes, tmp_path))
    for fragment in fragments:
        assert fragment in str(err.value)


def test_hf_local_gpt_neox_folder_matching_model_is_accepted(tmp_path: Path) -> None:
    validate_params(changed({"pretrain.init": hf_folder(NEOX)}, tmp_path))


def test_params_error_is_value_and_user_error_and_lists_every_problem() -> None:
    d = copy.deepcopy(VALID)
    d["model"]["hidden"], d["train"]["seeds"] = "x", []
    with pytest.raises(ParamsError) as err:
        validate_params(d)
    assert isinstance(err.value, ValueError) and isinstance(err.value, UserError)
    assert len(err.value.problems) == 2 and str(err.value).startswith("2 problems:")


def test_not_a_mapping() -> None:
    with pytest.raises(ParamsError, match="expected a mapping with the sections experiment, scale"):
        validate_params(["experiment"])


def test_shipped_params_valid() -> None:  # on main and on every experiment branch: named after its preset
    assert (ROOT / f"experiments/{load_params(ROOT / 'params.yaml')['experiment']}.yaml").is_file()


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_presets_valid(preset: Path) -> None:
    load_params(preset)


def test_params_yaml_is_a_preset() -> None:  # main carries landmark_v2-demo; a branch, the preset it was made from
    assert (ROOT / "params.yaml").read_bytes() in {p.read_bytes() for p in PRESETS}


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# keys whose v1 -> v2 change fixes a flaw of seed-v1.md §1/§3 (the rest of a diff is scale)
DESIGN_KEYS = {
    "experiment", "data.split", "data.test_fraction", "data.max_chunks", "memories.num_memories",
    "memories.examples_test", "memories.queries_per_domain", "memories.builder_tokens", "model.layernorm",
    "model.memory.num_memories", "model.memory.state", "model.memory.readout_norm", "model.memory.relevance",
    "model.memory.empty", "model.memory.assignment", "model.memory.landmark_norm", "model.memory.score_scale",
    "model.memory.encoder_keys", "model.memory.score_centering", "model.memory.score",
    "model.memory.score_temperature", "pretrain.init", "train.protocol", "train.variants", "train.seeds",
    "train.grad_clip", "train.write_grad", "train.eval_memory", "eval.report_split", "eval.mixers",
    # v1 as the note ran it (issue 13): delta writes, summed loss, 256-token inputs, float32, the side experiment
    "model.memory.write", "train.loss_reduction", "train.precision", "data.lm_input_len",
    "memories.builder_padding", "memories.builder_text_tokens", "memories.builder_domains",
    # the recall task (issue 11): memory decides the answer, memory past layer 0, oracle start, trained brackets
    "memories.task", "model.memory_layer", "train.init_from",
}
# the v2 demo trains the recall task at a budget of its own (more, shorter examples; larger batch and lr)
RECALL_DEMO_BUDGET = {"memories.examples_train", "memories.examples_val", "memories.num_memories",
                      "model.memory.num_memories", "train.batch_size", "train.lr", "train.max_steps_per_epoch",
                      "train.patience", "model.memory.encoder_capacity"}


@pytest.mark.parametrize("v1, v2, scale_keys", [
    ("landmark_v1-demo", "landmark_v2-demo", RECALL_DEMO_BUDGET),
    ("landmark_v1", "landmark_v2", {"data.max_documents"}),
], ids=["demo", "full"])
def test_v1_and_v2_presets_differ_only_in_design_keys(v1: str, v2: str, scale_keys: set[str]) -> None:
    a, b = (_flat(load_params(ROOT / f"experiments/{n}.yaml")) for n in (v1, v2))
    assert a.keys() == b.keys()
    diff = {k for k in a if a[k] != b[k]}
    assert diff <= DESIGN_KEYS | scale_keys
    assert {"model.memory.readout_norm", "data.split", "train.eval_memory", "model.memory.state"} <= diff


def test_v1_preset_is_the_v1_setting() -> None:
    p = load_params(ROOT / "experiments/landmark_v1.yaml")
    m = p["model"]
    assert (m["vocab_size"], m["hidden"], m["layers"], m["heads"], m["ffn"]) == (50304, 512, 6, 8, 2048)
    assert (p["data"]["chunk_len"], p["data"]["max_chunks"], p["train"]["seeds"]) == (256, 5000, [42])
    t = p["train"]
    assert (t["epochs"], t["patience"], t["batch_size"], t["lr"], t["weight_decay"]) == (30, 5, 8, 1e-4, 0.01)


def test_schema_documents_every_field() -> None:
    def walk(node: dict, path: str) -> None:
        assert "description" in node, path
        if node.get("type") == "object":
            assert node.get("additionalProperties") is False, path
            assert set(node["required"]) == set(node["properties"]), path
            for key, sub in node["properties"].items():
                walk(sub, f"{path}.{key}".lstrip("."))
        if "items" in node:
            walk(node["items"], f"{path}[]")
    walk(schema(), "")


def test_snakemake_validate_accepts_the_schema() -> None:
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    config = copy.deepcopy(VALID)
    validate(config, str(SCHEMA_PATH))
    assert config == VALID  # no defaults injected
    config["model"]["memory"]["state"] = "bogus"
    with pytest.raises(WorkflowError):
        validate(config, str(SCHEMA_PATH))


@pytest.mark.parametrize("text, fragment", [
    ("experiment: a\nexperiment: b\n", "duplicate key 'experiment'"),
    ("data: [unclosed\n", "invalid YAML"),
    ("just a string\n", "expected a mapping"),
    ("", "expected a mapping"),
], ids=["duplicate-key", "syntax-error", "scalar", "empty-file"])
def test_load_params_file_problems(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=fragment) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: ")


def test_load_params_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "absent.yaml")


# --- property: any mutation of a valid dict gives a valid dict or a ParamsError, nothing else ---

LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**12), st.floats(), st.text(max_size=8),
    st.sampled_from(["on", "off", "hf:/", "hf:.", "hf:~", "hf:a/b", "shared", "selection", "lm", "pythia",
                     "text_dir", "pile", "test", "", "learned", "oracle"]),
)
VALUES = st.recursive(
    LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6) | st.integers(),
                                                                          inner, max_size=3), max_leaves=6)


def _slots(node: Any) -> list[tuple[Any, Any]]:
    """(container, key) for every entry of every dict/list in `node`."""
    keys = node.keys() if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
    out = [(node, k) for k in keys]
    for k in list(keys):
        out += _slots(node[k])
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_mutations_give_valid_params_or_params_error(data: st.DataObject) -> None:
    d = copy.deepcopy(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        container, key = data.draw(st.sampled_from(_slots(d)))
        op = data.draw(st.sampled_from(["delete", "set", "add"]))
        if op == "delete":
            del container[key]
        elif op == "set":
            container[key] = data.draw(VALUES)
        elif isinstance(container, list):
            container.append(data.draw(VALUES))
        else:
            container[data.draw(st.text(max_size=6) | st.integers())] = data.draw(VALUES)
    try:
        validate_params(d)
    except ParamsError as e:
        assert str(e)


# --- cli_main: user errors exit 2 with one message, no traceback ---

SCRIPT = textwrap.dedent("""
    import sys
    from multimem.params import cli_main, load_params

    @cli_main
    def main() -> None:
        if sys.argv[1] == "interrupt":
            raise KeyboardInterrupt
        load_params(sys.argv[1])
        print("ok")

    if __name__ == "__main__":
        main()
""")


@pytest.mark.parametrize("arg, rc, stderr_start", [
    ("bad", 2, "error: "), ("interrupt", 130, "interrupted: "), ("good", 0, ""),
], ids=["params-error", "ctrl-c", "success"])
def test_cli_main_exit_codes(tmp_path: Path, arg: str, rc: int, stderr_start: str) -> None:
    script = tmp_path / "stage.py"
    script.write_text(SCRIPT)
    bad = copy.deepcopy(VALID)
    bad["model"]["memory"]["top_k"] = 99
    (tmp_path / "bad").write_text(yaml.safe_dump(bad))
    (tmp_path / "good").write_text((ROOT / "params.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run([sys.executable, str(script), arg], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == rc, res.stderr
    assert res.stderr.startswith(stderr_start) and "Traceback" not in res.stderr
    if arg == "bad":
        assert "model.memory.top_k: 99" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cli_main_exits_with_the_error_classes_code():
    from multimem.params import cli_main
    from multimem.training.loop import NonFiniteError

    @cli_main
    def diverges() -> int:
        raise NonFiniteError("non-finite training loss (nan) at epoch 1, step 3")

    with pytest.raises(SystemExit) as stop:
        diverges()
    assert stop.value.code == 3


def test_v1_memory_flaws_are_allowed_on_the_selection_protocol(tmp_path: Path) -> None:
    """v1's batch-shared bank and its memory-free validation stay expressible on the recall task, so the
    ablation can measure what each cost; the continuation task still needs whole documents per split."""
    ok = changed({"model.memory.state": "shared", "train.eval_memory": "off", "data.split": "shuffled_chunks",
                  "data.test_fraction": 0, "memories.examples_test": 0, "eval.report_split": "val"}, tmp_path)
    assert validate_params(ok) is ok
    with pytest.raises(ParamsError, match="data.split: 'shuffled_chunks' is not allowed"):
        validate_params({**ok, "memories": {**ok["memories"], "task": "continuation"}})
