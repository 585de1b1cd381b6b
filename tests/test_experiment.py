"""`python -m multimem.experiment`: experiment branches made from presets, in a throwaway git repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from multimem.experiment import main

ROOT = Path(__file__).resolve().parents[1]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository on branch main with params.yaml and experiments/ committed; the cwd."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "experiments", repo / "experiments")
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "config", "user.name", "Test")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "init")
    monkeypatch.chdir(repo)
    return repo


def test_new_makes_branch_with_preset_params(repo: Path) -> None:
    main(["new", "landmark_v1-demo"])
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "exp/landmark_v1-demo"
    assert (repo / "params.yaml").read_bytes() == (repo / "experiments/landmark_v1-demo.yaml").read_bytes()
    assert git(repo, "log", "-1", "--format=%s") == (
        "experiment landmark_v1-demo: params from experiments/landmark_v1-demo.yaml")
    assert git(repo, "show", "--name-only", "--format=", "HEAD") == "params.yaml"
    assert git(repo, "show", "main:params.yaml") == (ROOT / "params.yaml").read_text().strip()
    assert git(repo, "status", "--porcelain") == ""


def test_new_with_branch_option_and_unchanged_params(repo: Path) -> None:
    main(["new", "landmark_v2-demo", "--branch", "exp/again"])
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "exp/again"
    assert git(repo, "rev-list", "--count", "HEAD") == "2"


@pytest.mark.parametrize("setup, args, fragment", [
    (lambda r: git(r, "branch", "exp/landmark_v1"), ["new", "landmark_v1"], "branch 'exp/landmark_v1' already exists"),
    (lambda r: (r / "params.yaml").write_text("experiment: x\n"), ["new", "landmark_v1"],
     "params.yaml has uncommitted changes"),
    (lambda r: ((r / "notes.txt").write_text("x"), git(r, "add", "notes.txt")), ["new", "landmark_v1"],
     "notes.txt has uncommitted changes, which would travel to the new branch"),
    (lambda r: None, ["new", "landmark_v3"], "preset 'landmark_v3' not found"),
    (lambda r: (r / "experiments/bad.yaml").write_text(
        (r / "params.yaml").read_text().replace("top_k: 0 ", "top_k: 99")),
     ["new", "bad"], "experiments/bad.yaml: model.memory.top_k: 99"),
], ids=["branch-exists", "params-modified", "staged-file", "unknown-preset", "invalid-preset"])
def test_new_refuses_with_clear_error(repo: Path, capsys: pytest.CaptureFixture, setup, args: list[str],
                                      fragment: str) -> None:
    setup(repo)
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert fragment in capsys.readouterr().err
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_failed_commit_rolls_back(repo: Path, capsys: pytest.CaptureFixture) -> None:
    hook = repo / ".git/hooks/pre-commit"
    hook.write_text("#!/bin/sh\necho rejected by hook >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(SystemExit):
        main(["new", "landmark_v1"])
    assert "rejected by hook" in capsys.readouterr().err
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert git(repo, "branch", "--list", "exp/*") == "" and git(repo, "status", "--porcelain") == ""


def test_list_shows_presets(repo: Path, capsys: pytest.CaptureFixture) -> None:
    main(["list"])
    out = capsys.readouterr().out
    for name in ("landmark_v1 ", "landmark_v1-demo", "landmark_v2 ", "landmark_v2-demo"):
        assert name in out
    assert "INVALID" not in out


def test_module_entry_point(repo: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "multimem.experiment", "new", "landmark_v1"]
    first = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "exp/landmark_v1" in first.stdout
    again = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.startswith("error: ") and "Traceback" not in again.stderr


def test_keep_makes_an_experiment_reachable_and_branches_brings_it_back(repo: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    main(["new", "landmark_v1-demo"])
    (repo / "metrics").mkdir()
    (repo / "metrics/headline.json").write_text('{"experiment": "landmark_v1-demo"}\n')
    git(repo, "add", "metrics")
    git(repo, "commit", "--quiet", "-m", "v1 demo: results")
    tip = git(repo, "rev-parse", "HEAD")
    git(repo, "switch", "--quiet", "main")
    before = git(repo, "rev-parse", "HEAD^{tree}")
    main(["keep", "exp/landmark_v1-demo"])
    assert "experiment results kept reachable: landmark_v1-demo (exp/landmark_v1-demo)" in capsys.readouterr().out
    assert git(repo, "rev-parse", "HEAD^{tree}") == before  # main's files unchanged
    assert git(repo, "rev-parse", "HEAD^2") == tip

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(repo), str(clone)], check=True)
    assert git(clone, "branch", "--list", "exp/*") == ""  # a clone has only main
    os.chdir(clone)
    main(["branches"])
    out = capsys.readouterr().out
    assert "exp/landmark_v1-demo" in out and "created" in out
    assert git(clone, "rev-parse", "exp/landmark_v1-demo") == tip
    assert git(clone, "show", "exp/landmark_v1-demo:metrics/headline.json") == '{"experiment": "landmark_v1-demo"}'
    main(["branches"])
    assert "exists" in capsys.readouterr().out  # a second run leaves the branch as it is


def test_keep_refuses_a_missing_branch_and_a_dirty_tree(repo: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["keep", "exp/nothing"])
    assert "branch 'exp/nothing' does not exist" in capsys.readouterr().err
    main(["new", "landmark_v1-demo"])
    git(repo, "switch", "--quiet", "main")
    (repo / "params.yaml").write_text("changed: true\n")
    with pytest.raises(SystemExit):
        main(["keep", "exp/landmark_v1-demo"])
    assert "uncommitted changes" in capsys.readouterr().err
    assert git(repo, "rev-list", "--count", "HEAD") == "1"
