"""A tiny, learnable project workspace in the brief's data formats, for the training tests
(imported by the other tests/test_training_*.py), and checks that it is well-formed."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import yaml

from multimem.model.config import MemoryConfig, ModelConfig
from multimem.integrity import sha256_file, verify_manifest
from multimem.params import validate_params
from multimem.training.batches import LMChunks, SelectionExamples
from pipeline_helpers import BASE_PARAMS

REPO = Path(__file__).resolve().parents[1]
VOCAB, N_MEM, SEG, TGT, CHUNK = 256, 4, 8, 8, 17  # vocab: the params schema minimum

TINY_MODEL = {"vocab_size": VOCAB, "hidden": 32, "layers": 2, "heads": 2, "ffn": 64}

V1_MEMORY = dict(state="shared", readout_norm="v1", relevance="sequence_mean", write="simple",
                 empty="zero_score", assignment="round_robin", landmark_norm="sum", score_scale="none")
V2_MEMORY = dict(state="per_example", readout_norm="exact", relevance="per_token", write="simple",
                 empty="masked", assignment="explicit", landmark_norm="mean", score_scale="sqrt_d")


def tiny_config(landmark: str = "learned", protocol: str = "selection", **memory) -> ModelConfig:
    """vocab 256, hidden 32, 2 layers, 2 heads, ffn 64, 4 memories; v1 switches for lm, v2 for selection."""
    switches = {**(V1_MEMORY if protocol == "lm" else V2_MEMORY), **memory}
    mem = MemoryConfig(num_memories=N_MEM, landmark=landmark, encoder_capacity=16, encoder_heads=2,
                       encoder_ffn=32, **switches)
    return ModelConfig(layernorm="separate", memory=mem, **TINY_MODEL)


def lm_chunks(n: int, seed: int) -> np.ndarray:
    """Arithmetic progressions mod VOCAB (step 1..3): int32 [n, CHUNK], learnable from context."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, VOCAB, (n, 1))
    step = rng.integers(1, 4, (n, 1))
    return ((start + step * np.arange(CHUNK)) % VOCAB).astype(np.int32)


def selection_arrays(e: int, seed: int) -> dict[str, np.ndarray]:
    """Each slot holds an arithmetic progression; the target continues the true slot's one."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, VOCAB, (e, N_MEM, 1))
    step = rng.integers(1, 4, (e, N_MEM, 1))
    context = (start + step * np.arange(SEG)) % VOCAB  # [E, N, SEG]
    true_slot = rng.integers(0, N_MEM, e)
    i = np.arange(e)
    s0, st = start[i, true_slot], step[i, true_slot]  # [E, 1]
    target = (s0 + st * np.arange(SEG - 1, SEG + TGT)) % VOCAB  # [E, TGT + 1]; target[:, 0] = last token
    return {"context": context.astype(np.int32), "target": target.astype(np.int32),
            "true_slot": true_slot.astype(np.int64),
            "slot_domain": np.tile(np.arange(N_MEM, dtype=np.int16), (e, 1))}


def _manifest(folder: Path) -> None:
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.name != "manifest.json"}
    (folder / "manifest.json").write_text(json.dumps({"files": files}))


def write_data(root: Path, n_train: int = 64, n_val: int = 16) -> None:
    """root/data/prepared/lm_{train,val}.npy and root/data/memories/selection_{train,val}.npz (+ manifests)."""
    prepared, memories = root / "data" / "prepared", root / "data" / "memories"
    prepared.mkdir(parents=True, exist_ok=True)
    memories.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("val", n_val, 2)):
        np.save(prepared / f"lm_{split}.npy", lm_chunks(n, seed))
        np.savez(memories / f"selection_{split}.npz", **selection_arrays(n, seed + 10))
    _manifest(prepared)
    _manifest(memories)


def tiny_params(protocol: str = "selection", **train) -> dict:
    """Main's preset (BASE_PARAMS), shrunk to the tiny model and data; `train` overrides train.*."""
    p = copy.deepcopy(yaml.safe_load(BASE_PARAMS.read_text()))
    p["data"]["vocab_size"] = VOCAB
    p["memories"].update(num_memories=N_MEM, task="continuation")  # the tiny data are continuation examples
    p["model"].update(TINY_MODEL, layernorm="separate")
    p["model"]["memory"].update(num_memories=N_MEM, encoder_capacity=16, encoder_heads=2, encoder_ffn=32,
                                **(V1_MEMORY if protocol == "lm" else V2_MEMORY))
    p["pretrain"].update(init="scratch", epochs=1, batch_size=8, lr=0.01, max_steps=4, seed=0)
    p["train"].update(protocol=protocol, init_from="base", epochs=2, patience=2, batch_size=8, lr=0.01, threads=1,
                      device="cpu",
                      grad_clip=1.0, max_steps_per_epoch=0,
                      eval_memory="off" if protocol == "lm" else "on",
                      write_grad="detached" if protocol == "lm" else "differentiable")
    p["train"].update(train)
    if protocol == "lm":
        p["train"]["variants"] = ["memory_norm", "learned"]
    return validate_params(p)


def write_params(root: Path, params: dict) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_workspace_is_in_the_brief_formats(tmp_path: Path) -> None:
    write_data(tmp_path)
    for folder in ("prepared", "memories"):
        verify_manifest(tmp_path / "data" / folder)
    lm = LMChunks.load(tmp_path / "data" / "prepared" / "lm_train.npy")
    sel = SelectionExamples.load(tmp_path / "data" / "memories" / "selection_val.npz")
    assert lm.chunks.dtype == np.int32 and lm.chunks.shape == (64, CHUNK)
    assert sel.context.shape == (16, N_MEM, SEG) and sel.target.shape == (16, TGT + 1)
    i = np.arange(16)
    assert (sel.target[:, 0] == sel.context[i, sel.true_slot, -1]).all()
    for protocol in ("lm", "selection"):
        tiny_params(protocol)
