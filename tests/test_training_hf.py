"""The fine-tune path: pretrain init hf:<folder> from a tiny random GPTNeoXForCausalLM, then a variant
trained from that base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from multimem.model.transformer import TransformerLM
from multimem.params import validate_params
from multimem.training import runs
from multimem.training.weights import load_model_files
from test_training_workspace import TINY_MODEL, tiny_params, write_data


@pytest.fixture()
def hf_folder(tmp_path: Path) -> Path:
    config = GPTNeoXConfig(vocab_size=TINY_MODEL["vocab_size"], hidden_size=TINY_MODEL["hidden"],
                           num_hidden_layers=TINY_MODEL["layers"], num_attention_heads=TINY_MODEL["heads"],
                           intermediate_size=TINY_MODEL["ffn"], rotary_pct=0.25, max_position_embeddings=64)
    torch.manual_seed(0)
    folder = tmp_path / "pythia-tiny"
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    return folder


def test_fine_tune_from_hf_weights(tmp_path: Path, hf_folder: Path) -> None:
    write_data(tmp_path)
    hf = load_file(hf_folder / "model.safetensors")
    params = tiny_params("selection", epochs=2)

    params["pretrain"].update(init=f"hf:{hf_folder}", epochs=0)  # imported as is
    validate_params(params)  # the folder's config matches the model section
    as_is = runs.pretrain(params, tmp_path / "data/prepared", tmp_path / "imported")
    assert as_is["trained"] is False
    imported = load_file(tmp_path / "imported" / "model.safetensors")
    for name in ("embed_in.weight", "layers.0.attention.query_key_value.weight", "embed_out.weight"):
        assert torch.equal(imported[name], hf[name if name == "embed_out.weight" else f"gpt_neox.{name}"])

    params["pretrain"].update(epochs=1, max_steps=3)  # fine-tuned on lm_train
    tuned = runs.pretrain(params, tmp_path / "data/prepared", tmp_path / "models/base")
    assert tuned["trained"] and tuned["steps"] == 3
    base = load_file(tmp_path / "models/base/model.safetensors")
    assert not torch.equal(base["embed_in.weight"], imported["embed_in.weight"])
    info = json.loads((tmp_path / "models/base/config.json").read_text())
    assert info["init"] == f"hf:{hf_folder}" and info["model"]["layernorm"] == "separate"

    summary = runs.train(params, "hsa_mean", 0, tmp_path / "data", tmp_path / "models/base", tmp_path / "models")
    run = tmp_path / "models/hsa_mean/seed0"
    cfg = json.loads((run / "config.json").read_text())
    ml = params["model"]["memory_layer"]  # only the memory layer's own parameters are not in the base
    assert cfg["init"]["init"] == f"hf:{hf_folder}"
    assert cfg["from_init"]["kept"] == [f"layers.{ml}.attention.gate", f"layers.{ml}.attention.landmark.log_temperature"]
    losses = [h["train/loss"] for h in summary["history"]]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert (run / "live" / "metrics.json").exists()
    state, cfg_run, _ = load_model_files(run, "best.safetensors", "train")
    TransformerLM(cfg_run).load_state_dict(state)  # the run's best weights load into its own config
