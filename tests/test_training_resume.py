"""pipeline/pretrain.py and pipeline/train.py end to end: a run killed with SIGKILL (twice, then with its
newest checkpoint truncated) and rerun with the same command ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from multimem.training import runs
from test_training_workspace import REPO, tiny_params, write_data, write_params

VARIANT = "learned"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


def _train_cmd(root: Path, models: str) -> list[str]:
    return [sys.executable, str(REPO / "pipeline" / "train.py"), "--params", str(root / "params.yaml"),
            "--variant", VARIANT, "--seed", "0", "--data", str(root / "data"), "--base", str(root / "models/base"),
            "--models", str(root / models), "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    write_data(root, n_train=64, n_val=16)
    write_params(root, tiny_params("selection", epochs=4, patience=4, batch_size=4))
    subprocess.run([sys.executable, str(REPO / "pipeline" / "pretrain.py"), "--params", str(root / "params.yaml"),
                    "--prepared", str(root / "data/prepared"), "--out", str(root / "models/base")],
                   env=_env(), cwd=root, check=True, capture_output=True, text=True)
    return root


def _kill_when(proc: subprocess.Popen, ready) -> bool:
    """SIGKILL `proc` as soon as ready() holds; False if it exited first."""
    while proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    return False


def _outputs(run: Path) -> tuple[dict, dict, dict, dict]:
    summary = json.loads((run / "train_summary.json").read_text())
    summary.pop("seconds")
    metrics = json.loads((run / "live" / "metrics.json").read_text())
    final = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["payload"]
    return summary, metrics, load_file(run / "best.safetensors"), {**final["model"], **{
        f"optimizer/{k}": v for k, v in final["optimizer"]["state"][0].items()}}


def test_base_is_written_by_pretrain(workspace: Path) -> None:
    base = workspace / "models" / "base"
    info = json.loads((base / "config.json").read_text())
    assert info["init"] == "scratch" and info["model"]["memory_layer"] is None
    assert set(json.loads((base / "manifest.json").read_text())["files"]) == {
        "model.safetensors", "config.json", "metrics.json"}


def test_killed_run_resumes_bit_identically(workspace: Path) -> None:
    subprocess.run(_train_cmd(workspace, "uninterrupted"), env=_env(), cwd=workspace, check=True,
                   capture_output=True)
    run = workspace / "killed" / VARIANT / "seed0"
    last = run / "checkpoints" / "last.pt"

    first = subprocess.Popen(_train_cmd(workspace, "killed"), env=_env(), cwd=workspace,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _kill_when(first, last.exists), "the run finished before its first checkpoint could be seen"
    assert not (run / "train_summary.json").exists()

    second = subprocess.Popen(_train_cmd(workspace, "killed"), env=_env(), cwd=workspace,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = {last.stat().st_mtime_ns}

    def two_more_checkpoints() -> bool:
        try:
            seen.add(last.stat().st_mtime_ns)
        except FileNotFoundError:  # between the rotation and the rename
            pass
        return len(seen) >= 3

    assert _kill_when(second, two_more_checkpoints), "the resumed run finished before it could be killed"
    truncated = last.exists()  # absent only if killed between the rotation and the rename
    if truncated:
        last.write_bytes(last.read_bytes()[:1000])  # a truncated newest checkpoint
    third = subprocess.run(_train_cmd(workspace, "killed"), env=_env(), cwd=workspace, check=True,
                           capture_output=True, text=True)
    assert "resumed from" in third.stderr
    if truncated:
        assert "corrupt or truncated" in third.stderr and "falling back" in third.stderr
        assert (run / "checkpoints" / "last.pt.corrupt").exists()

    a = _outputs(workspace / "uninterrupted" / VARIANT / "seed0")
    b = _outputs(run)
    assert a[0] == b[0] and a[1] == b[1]  # summary (less wall time), dvclive metrics
    assert a[0]["epochs_run"] >= 2
    for x, y in zip(a[2:], b[2:]):  # best weights; final weights and optimiser state
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_changed_parameters_do_not_resume(workspace: Path) -> None:
    params = tiny_params("selection", epochs=1, batch_size=4)
    kw = dict(data=workspace / "data", base=workspace / "models/base", models=workspace / "changed")
    runs.train(params, VARIANT, 0, **kw)
    params["train"]["lr"] = 0.002
    with pytest.warns(UserWarning, match="another run"):
        changed = runs.train(params, VARIANT, 0, **kw)
    fresh = runs.train(params, VARIANT, 0, **{**kw, "models": workspace / "fresh"})
    assert changed["history"] == fresh["history"]
