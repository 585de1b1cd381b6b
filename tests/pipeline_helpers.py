"""A throwaway copy of the project as its own git repository, with a tiny experiment, for the
end-to-end tests of the real tools (dvc, snakemake, papermill)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# What tests start from: main's preset, never the checkout's params.yaml (each experiment branch has its
# own), so the suite passes on every branch.
BASE_PARAMS = ROOT / "experiments" / "landmark_v2-demo.yaml"

TINY: dict[str, Any] = {
    "experiment": "tiny",
    "data.max_documents": 400,
    "data.vocab_size": 512,
    "data.chunk_len": 64,
    "memories.num_memories": 4,
    "memories.segment_len": 16,
    "memories.target_len": 16,
    "memories.examples_train": 64,
    "memories.examples_val": 32,
    "memories.examples_test": 32,
    "memories.builder_tokens": 64,
    "memories.queries_per_domain": 8,
    "memories.query_len": 16,
    "memories.recall.num_keys": 128,
    "memories.recall.num_values": 32,
    "model.vocab_size": 512,
    "model.hidden": 32,
    "model.heads": 2,
    "model.ffn": 64,
    "model.memory.num_memories": 4,
    "model.memory.encoder_heads": 2,
    "model.memory.encoder_ffn": 32,
    "model.memory.encoder_capacity": 16,
    "pretrain.max_steps": 8,
    "train.variants": ["memory_norm", "learned"],
    "train.seeds": [0, 1],
    "train.epochs": 2,
    "train.max_steps_per_epoch": 3,
    "train.start_steps": 4,  # a tiny oracle start; the gate lets it through (a tiny run cannot converge)
    "train.oracle_gate": 0.0,
    "eval.top_k": [1, 2],
    "eval.bootstrap_resamples": 200,
}


def set_key(params: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        params = params[p]
    params[last] = value


def tiny_params(base: Path = BASE_PARAMS, **overrides: Any) -> dict[str, Any]:
    """The preset `base` shrunk to the TINY experiment, then `overrides` (dotted keys)."""
    params = yaml.safe_load(base.read_text())
    for k, v in {**TINY, **overrides}.items():
        set_key(params, k, v)
    return params


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e['PATH']}"
    e.setdefault("MPLCONFIGDIR", str(ROOT / ".cache" / "matplotlib"))
    e.setdefault("IPYTHONDIR", str(ROOT / ".cache" / "ipython"))
    e["DVC_NO_ANALYTICS"] = "1"
    e["GIT_AUTHOR_NAME"] = e["GIT_COMMITTER_NAME"] = "test"
    e["GIT_AUTHOR_EMAIL"] = e["GIT_COMMITTER_EMAIL"] = "test@example.com"
    return e


def run(cmd: list[str] | str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env(), text=True, capture_output=True, shell=isinstance(cmd, str))
    if check and p.returncode:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


def project_copy(dest: Path, params: dict[str, Any]) -> Path:
    """The project's tracked and new (non-ignored) files in a fresh git repository at `dest`."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, text=True,
                           capture_output=True, check=True).stdout.split("\n")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "tiny experiment"], dest)
    return dest
