"""`dvc repro` killed (SIGKILL) during a train stage, then rerun: the run resumes from its
checkpoint (the output is `persist: true`) and ends identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from pipeline_helpers import env, project_copy, run, tiny_params

pytestmark = pytest.mark.slow
STAGE = "train@memory_norm-0"
RUN = "models/memory_norm/seed0"


def _params():
    return tiny_params(**{"train.variants": ["memory_norm"], "train.seeds": [0], "train.epochs": 3,
                          "train.max_steps_per_epoch": 20, "train.patience": 3})


def _result(repo):
    summary = json.loads((repo / RUN / "train_summary.json").read_text())
    summary.pop("seconds")
    return summary, (repo / RUN / "best.safetensors").read_bytes()


def test_killed_dvc_repro_resumes_identically(tmp_path):
    whole = project_copy(tmp_path / "whole", _params())
    run(["dvc", "repro", STAGE], whole)

    killed = project_copy(tmp_path / "killed", _params())
    run(["dvc", "repro", "pretrain", "build_memories"], killed)
    proc = subprocess.Popen(["dvc", "repro", STAGE], cwd=killed, env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / RUN / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300  # a guard against a hang, not a timing assertion
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists() and not (killed / RUN / "train_summary.json").exists(), \
        "the kill should land after the first checkpoint and before the run ends"
    assert STAGE in run(["dvc", "status", STAGE], killed).stdout  # DVC sees the stage unfinished

    rerun = run(["dvc", "repro", STAGE], killed)
    assert "resumed from" in rerun.stdout + rerun.stderr
    assert _result(killed) == _result(whole)
