"""Experiment branches from presets: one experiment per git branch, its parameters in params.yaml.

    python -m multimem.experiment list
    python -m multimem.experiment new landmark_v1 [--branch exp/landmark_v1]

`new` validates experiments/<preset>.yaml, creates the branch from the current HEAD, copies the preset
to params.yaml and commits only that file. `dvc params diff exp/landmark_v1 exp/landmark_v2` then
lists what differs between two experiments.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import yaml

from multimem.atomic import write_text_atomic
from multimem.params import ParamsError, UserError, cli_main, load_params

PRESETS_DIR = "experiments"
PARAMS_FILE = "params.yaml"


class ExperimentError(UserError):
    """An experiment branch cannot be made (no git repository, branch exists, params.yaml modified...)."""


def _git(root: Path, *args: str) -> str:
    """Run git in `root`; return stdout, raise ExperimentError with git's message on failure."""
    try:
        res = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ExperimentError("git is not installed or not on PATH") from None
    if res.returncode:
        raise ExperimentError(f"git {' '.join(args)} failed: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout.strip()


def repo_root(cwd: Path | None = None) -> Path:
    """Top folder of the git work tree containing `cwd` (default: the current directory)."""
    cwd = Path.cwd() if cwd is None else cwd
    try:
        return Path(_git(cwd, "rev-parse", "--show-toplevel"))
    except ExperimentError:
        raise ExperimentError(f"{cwd} is not inside a git repository") from None


def list_presets(root: Path) -> list[Path]:
    """Preset files experiments/*.yaml under `root`, sorted by name."""
    return sorted((root / PRESETS_DIR).glob("*.yaml"))


def preset_path(preset: str, root: Path) -> Path:
    """experiments/<preset>.yaml for a bare name; a path (with / or .yaml) as given."""
    is_path = "/" in preset or preset.endswith((".yaml", ".yml"))
    path = Path(preset) if is_path else root / PRESETS_DIR / f"{preset}.yaml"
    if not path.is_file():
        names = ", ".join(p.stem for p in list_presets(root)) or "none"
        raise ExperimentError(f"preset {preset!r} not found ({path}); available: {names}")
    return path


def new_experiment(preset: str, branch: str | None = None, root: Path | None = None) -> str:
    """Create branch `branch` (default exp/<preset>) with params.yaml = the preset; return the branch."""
    root = repo_root() if root is None else root
    source = preset_path(preset, root)
    load_params(source)
    name = source.stem
    branch = branch or f"exp/{name}"
    _git(root, "check-ref-format", "--branch", branch)
    try:
        _git(root, "rev-parse", "--verify", "--quiet", "HEAD")
    except ExperimentError:
        raise ExperimentError(f"{root} has no commit yet; commit first, then make experiment branches") from None
    if subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"], cwd=root,
                      capture_output=True, check=False).returncode == 0:
        raise ExperimentError(f"branch {branch!r} already exists; pass --branch <new name>, "
                              f"or delete it first (git branch -D {branch})")
    if _git(root, "status", "--porcelain", "--untracked-files=all", "--", PARAMS_FILE):
        raise ExperimentError(f"{PARAMS_FILE} has uncommitted changes; commit or stash them first "
                              f"(git stash push {PARAMS_FILE})")
    params = root / PARAMS_FILE
    original = params.read_bytes() if params.exists() else None
    start = _git(root, "rev-parse", "--abbrev-ref", "HEAD")  # "HEAD" when detached
    start_args = ["--detach", _git(root, "rev-parse", "HEAD")] if start == "HEAD" else [start]
    _git(root, "switch", "--quiet", "-c", branch)
    try:
        write_text_atomic(params, source.read_text(encoding="utf-8"))
        _git(root, "add", "--", PARAMS_FILE)
        full, top = source.resolve(), root.resolve()
        shown = full.relative_to(top) if full.is_relative_to(top) else source
        _git(root, "commit", "--quiet", "--allow-empty", "-m",
             f"experiment {name}: params from {shown}", "--", PARAMS_FILE)
    except BaseException:
        if original is None:
            params.unlink(missing_ok=True)
        else:
            params.write_bytes(original)
        subprocess.run(["git", "reset", "--quiet", "--", PARAMS_FILE], cwd=root, capture_output=True, check=False)
        subprocess.run(["git", "switch", "--quiet", *start_args], cwd=root, capture_output=True, check=False)
        subprocess.run(["git", "branch", "-D", branch], cwd=root, capture_output=True, check=False)
        raise
    return branch


def _summary(path: Path) -> str:
    """One line: experiment, scale, protocol, variants, or why the preset is invalid."""
    try:
        p = load_params(path)
    except ParamsError as e:
        return f"INVALID: {e.problems[0]}"
    return (f"{p['experiment']:<14} {p['scale']:<5} {p['train']['protocol']:<9} "
            f"memories={p['model']['memory']['num_memories']:<3} variants={','.join(p['train']['variants'])}")


@cli_main
def main(argv: list[str] | None = None) -> None:
    """Command line: `list` presets or make a `new` experiment branch from one."""
    parser = argparse.ArgumentParser(prog="python -m multimem.experiment", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list presets in experiments/")
    new = sub.add_parser("new", help="make an experiment branch from a preset")
    new.add_argument("preset", help="preset name (experiments/<name>.yaml) or path")
    new.add_argument("--branch", help="branch to create (default exp/<preset>)")
    args = parser.parse_args(argv)
    if args.command == "list":
        try:
            root = repo_root()
        except ExperimentError:
            root = Path.cwd()
        for path in list_presets(root):
            print(f"{path.stem:<20} {_summary(path)}")
        return
    root = repo_root()
    branch = new_experiment(args.preset, args.branch, root)
    p = yaml.safe_load((root / PARAMS_FILE).read_text(encoding="utf-8"))
    print(f"on branch {branch}: {PARAMS_FILE} from preset {args.preset} "
          f"(experiment {p['experiment']}, scale {p['scale']}); run `dvc repro` next")


if __name__ == "__main__":
    main()
