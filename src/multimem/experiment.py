"""Experiment branches from presets: one experiment per git branch, its parameters in params.yaml.

    python -m multimem.experiment list
    python -m multimem.experiment new landmark_v1 [--branch exp/landmark_v1]
    python -m multimem.experiment check
    python -m multimem.experiment keep exp/landmark_v1-demo      # on main, after that branch's results
    python -m multimem.experiment branches                       # on a fresh clone: exp/* branches back

`new` validates experiments/<preset>.yaml and refuses a work tree with uncommitted changes (they would
travel to the new branch), then creates the branch from the current HEAD with one commit: params.yaml =
the preset, and the previous experiment's results (metrics/, reports/*.html and *.csv) removed, so the branch
holds only its own experiment once `dvc repro` has run. `dvc params diff exp/landmark_v1
exp/landmark_v2` then lists what differs between two experiments.
`keep` merges an experiment branch into the current one with git's "ours" strategy: the tree (params.yaml,
dvc.lock, results) stays the current branch's, but the branch's commits become part of its history, so
every clone of main carries them. `branches` finds those merges again and recreates the local branches, so
`dvc metrics diff exp/landmark_v1-demo main` works on a fresh clone.
`check` fails when dvc.lock no longer records the code, params.yaml or results of the work tree
(CI runs it: committed results must come from the committed code).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from multimem.atomic import write_text_atomic
from multimem.params import ParamsError, UserError, cli_main, load_params

PRESETS_DIR = "experiments"
PARAMS_FILE = "params.yaml"
RESULTS = "metrics"  # every experiment's results live here (and in reports/<experiment>.html)


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
    experiment = load_params(source)["experiment"]
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
    dirty = [line[2:].strip() for line in _git(root, "status", "--porcelain", "--untracked-files=all").splitlines()]
    if dirty:
        shown = ", ".join(dirty[:4]) + (f" and {len(dirty) - 4} more" if len(dirty) > 4 else "")
        raise ExperimentError(
            f"{shown} {'has' if len(dirty) == 1 else 'have'} uncommitted changes, which would travel to the new "
            "branch; commit them where they belong (git add -A && git commit), or discard them (git restore "
            "--staged --worktree . for changes; delete untracked files or list them in .gitignore)")
    params = root / PARAMS_FILE
    original = params.read_bytes() if params.exists() else None
    previous = (yaml.safe_load(original) or {}).get("experiment") if original else None
    start = _git(root, "rev-parse", "--abbrev-ref", "HEAD")  # "HEAD" when detached
    start_args = ["--detach", _git(root, "rev-parse", "HEAD")] if start == "HEAD" else [start]
    _git(root, "switch", "--quiet", "-c", branch)
    try:
        write_text_atomic(params, source.read_text(encoding="utf-8"))
        _git(root, "add", "--", PARAMS_FILE)
        if previous and previous != experiment:  # results of other experiments do not belong on this branch
            _git(root, "rm", "-r", "--quiet", "--ignore-unmatch", "--", RESULTS, "reports/*.html", "reports/*.csv")
        full, top = source.resolve(), root.resolve()
        shown = full.relative_to(top) if full.is_relative_to(top) else source
        _git(root, "commit", "--quiet", "--allow-empty", "-m", f"experiment {name}: params from {shown}")
    except BaseException:  # the tree was clean: restore it, go back, drop the branch
        subprocess.run(["git", "reset", "--quiet", "--hard"], cwd=root, capture_output=True, check=False)
        if original is None:
            params.unlink(missing_ok=True)
        subprocess.run(["git", "switch", "--quiet", *start_args], cwd=root, capture_output=True, check=False)
        subprocess.run(["git", "branch", "-D", branch], cwd=root, capture_output=True, check=False)
        raise
    return branch


KEEP_SUBJECT = "experiment results kept reachable:"  # subject of a `keep` merge: "<this> <experiment> (<branch>)"
_KEPT = re.compile(rf"^{re.escape(KEEP_SUBJECT)} (?P<experiment>\S+) \((?P<branch>[^)\s]+)\)$")


def _clean(root: Path, what: str) -> None:
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    if dirty:
        raise ExperimentError(f"{what} needs a work tree without uncommitted changes to tracked files; commit or "
                              f"discard them first:\n{dirty}")


def keep_experiment(branch: str, root: Path | None = None) -> str:
    """Merge `branch` into HEAD with strategy 'ours' (HEAD's tree unchanged; the branch's history reachable
    from HEAD); return the merge's subject."""
    root = repo_root() if root is None else root
    try:
        tip = _git(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}")
    except ExperimentError:
        raise ExperimentError(f"branch {branch!r} does not exist; allowed: a local branch "
                              "(git branch --list 'exp/*')") from None
    _clean(root, "keep")
    try:
        experiment = yaml.safe_load(_git(root, "show", f"{tip}:{PARAMS_FILE}"))["experiment"]
    except (ExperimentError, TypeError, KeyError, yaml.YAMLError):
        raise ExperimentError(f"branch {branch!r} has no params.yaml with an experiment name at its tip") from None
    subject = f"{KEEP_SUBJECT} {experiment} ({branch})"
    _git(root, "merge", "--quiet", "--no-ff", "--no-edit", "-s", "ours", "-m", subject, tip)
    return subject


def restore_branches(root: Path | None = None) -> list[tuple[str, str, bool]]:
    """Every `keep` merge in HEAD's history -> (branch, commit, created): the local branch is created at the
    kept commit unless a branch of that name exists already (then left as it is)."""
    root = repo_root() if root is None else root
    out = []
    for line in _git(root, "log", "--merges", "--format=%P%x09%s", "HEAD").splitlines():
        parents, _, subject = line.partition("\t")
        m = _KEPT.match(subject)
        if not m or len(parents.split()) != 2:
            continue
        branch, commit = m["branch"], parents.split()[1]
        exists = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"], cwd=root,
                                capture_output=True, check=False).returncode == 0
        if not exists:
            _git(root, "branch", branch, commit)
        out.append((branch, commit, not exists))
    return out


def lock_problems(root: Path) -> list[str]:
    """What `dvc status` finds changed since dvc.lock in git-tracked files: code and other tracked deps,
    params.yaml keys, tracked results (metrics, reports). Missing untracked outputs (data/, models/ on a
    fresh clone) are not problems: `dvc repro` remakes them as the lock says."""
    res = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=root, capture_output=True,
                         text=True, check=False)
    if res.returncode:
        raise ExperimentError(f"dvc status failed: {res.stderr.strip() or res.stdout.strip()}")
    tracked = _git(root, "ls-files").splitlines()
    is_tracked = lambda path: any(f == path or f.startswith(path.rstrip("/") + "/") for f in tracked)  # noqa: E731
    problems = []
    for stage, changes in json.loads(res.stdout or "{}").items():
        for change in changes:
            if isinstance(change, str):  # "changed command", "always changed"
                problems.append(f"{stage}: {change}")
                continue
            for kind in ("changed deps", "changed outs"):
                for path, what in change.get(kind, {}).items():
                    if isinstance(what, dict):  # a params file: {key: modified | new | deleted}
                        problems += [f"{stage}: {path} {key} {how}" for key, how in what.items()]
                    elif what != "deleted" and is_tracked(path):
                        problems.append(f"{stage}: {path} {what}")
    return problems


def _summary(path: Path) -> str:
    """One line: experiment, scale, protocol, variants, or why the preset is invalid."""
    try:
        p = load_params(path)
    except ParamsError as e:
        return f"INVALID: {e.problems[0]}"
    return (f"{p['experiment']:<18} {p['scale']:<5} {p['train']['protocol']:<9} "
            f"memories={p['model']['memory']['num_memories']:<3} variants={','.join(p['train']['variants'])}")


@cli_main
def main(argv: list[str] | None = None) -> None:
    """Command line: `list` presets, make a `new` experiment branch from one, `check` dvc.lock."""
    parser = argparse.ArgumentParser(prog="python -m multimem.experiment", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list presets in experiments/")
    new = sub.add_parser("new", help="make an experiment branch from a preset")
    new.add_argument("preset", help="preset name (experiments/<name>.yaml) or path")
    new.add_argument("--branch", help="branch to create (default exp/<preset>)")
    sub.add_parser("check", help="fail if dvc.lock does not record the tracked code, params and results (CI)")
    keep = sub.add_parser("keep", help="make an experiment branch's results reachable from this branch")
    keep.add_argument("branch")
    sub.add_parser("branches", help="recreate the experiment branches kept in this branch's history")
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
    if args.command == "keep":
        print(keep_experiment(args.branch, root))
        return
    if args.command == "branches":
        found = restore_branches(root)
        for branch, commit, created in found:
            print(f"{branch:<28} {commit[:12]} {'created' if created else 'exists'}")
        if not found:
            print("no experiment branch is kept in this history (python -m multimem.experiment keep <branch>)")
        return
    if args.command == "check":
        if problems := lock_problems(root):
            raise ExperimentError(f"dvc.lock does not match the work tree in {len(problems)} place(s): run "
                                  "`dvc repro` and commit dvc.lock with the results:\n  " + "\n  ".join(problems))
        print("dvc.lock matches the tracked code, params and results")
        return
    branch = new_experiment(args.preset, args.branch, root)
    p = yaml.safe_load((root / PARAMS_FILE).read_text(encoding="utf-8"))
    print(f"on branch {branch}: {PARAMS_FILE} from preset {args.preset} "
          f"(experiment {p['experiment']}, scale {p['scale']}); run `dvc repro` next")


if __name__ == "__main__":
    main()
