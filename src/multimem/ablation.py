"""Ablations: a ladder of rungs from a base preset, one fix more per rung, on one or more tasks.

    python -m multimem.ablation list   experiments/ablations/landmark_ablation.yaml
    python -m multimem.ablation params experiments/ablations/landmark_ablation.yaml recall-03-landmark_norm OUT

A spec (experiments/ablations/<name>.yaml) holds
    base    the preset every rung starts from (a path from the repository root)
    scale   dotted params.yaml keys set on every rung (the measuring setup, not a fix)
    tasks   task name -> keys that pose the task (applied after scale)
    steps   ordered [{name, fix, set: {all: {...}, <task>: {...}}}]; the first step is the base itself

Rung k of task t = base + scale + tasks[t] + the `set` of steps 1..k (all, then t's own keys): the fixes
accumulate, so rung k differs from rung k-1 by step k alone. A step that changes nothing for a task is
not a rung of that task (`same_as` names the rung whose results stand for it). Every rung is a full
experiment (params.yaml of its own, validated like any preset) named <task>-<kk>-<step>, built by
pipeline/rules/ablation.smk in build/ablation/<spec>/<rung>/.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from multimem.atomic import write_text_atomic
from multimem.params import ParamsError, UserError, cli_main, load_params, validate_params

SPEC_KEYS = {"base", "scale", "tasks", "steps"}
STEP_KEYS = {"name", "fix", "set"}
NAME = re.compile(r"[a-z][a-z0-9_]*$")


class AblationError(UserError, ValueError):
    """An ablation spec that cannot be expanded into valid rungs."""


@dataclass(frozen=True)
class Rung:
    """One experiment of the ladder: `changed` = the dotted keys its step changed for this task."""

    task: str
    index: int  # position of the step in spec["steps"] (0 = the base)
    step: str
    fix: str
    params: dict[str, Any] = field(repr=False)
    changed: dict[str, Any] = field(default_factory=dict)
    same_as: str | None = None  # a step that changes nothing here: the rung that stands for it

    @property
    def name(self) -> str:
        return f"{self.task}-{self.index:02d}-{self.step}"


def _get(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


def set_key(params: dict, dotted: str, value: Any, where: str) -> None:
    """params[a][b][c] = value for dotted 'a.b.c'; the key must exist already (no typo makes a new one)."""
    *head, last = dotted.split(".")
    d = params
    for i, part in enumerate(head):
        if not isinstance(d, dict) or part not in d:
            raise AblationError(f"{where}: key {dotted!r} is not a params.yaml key ({'.'.join(head[:i + 1])!r} "
                                "does not exist); allowed: the dotted keys of src/multimem/params_schema.yaml")
        d = d[part]
    if not isinstance(d, dict) or last not in d:
        raise AblationError(f"{where}: key {dotted!r} is not a params.yaml key; allowed: the dotted keys of "
                            "src/multimem/params_schema.yaml")
    d[last] = copy.deepcopy(value)


def _mapping(v: Any, where: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise AblationError(f"{where}: expected a mapping of dotted keys to values; got {type(v).__name__}")
    return v


def load_spec(path: str | Path) -> dict[str, Any]:
    """The spec at `path`, checked for its shape (not yet for the rungs' values: see rungs())."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise AblationError(f"ablation spec {path}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise AblationError(f"ablation spec {path}: not valid YAML ({e})") from None
    if not isinstance(spec, dict) or set(spec) != SPEC_KEYS:
        got = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise AblationError(f"ablation spec {path}: needs exactly the keys {sorted(SPEC_KEYS)}; got {got}")
    tasks = _mapping(spec["tasks"], f"{path}: tasks")
    if not tasks or not all(isinstance(t, str) and NAME.match(t) for t in tasks):
        raise AblationError(f"{path}: tasks: needs at least one task named [a-z][a-z0-9_]*; got {list(tasks)}")
    steps = spec["steps"]
    if not isinstance(steps, list) or not steps:
        raise AblationError(f"{path}: steps: needs a list of steps, the first one the base itself")
    seen: set[str] = set()
    for i, step in enumerate(steps):
        where = f"{path}: steps[{i}]"
        if not isinstance(step, dict) or not {"name", "fix"} <= set(step) or set(step) - STEP_KEYS:
            raise AblationError(f"{where}: needs the keys name, fix (and set, but not on the first step); "
                                f"got {sorted(step) if isinstance(step, dict) else step!r}")
        name = step["name"]
        if not isinstance(name, str) or not NAME.match(name) or name in seen:
            raise AblationError(f"{where}: name {name!r} must be unique and match [a-z][a-z0-9_]*")
        seen.add(name)
        sets = _mapping(step.get("set"), f"{where} ({name}): set")
        if i == 0 and sets:
            raise AblationError(f"{where} ({name}): the first step is the base itself and sets nothing")
        if i and not sets:
            raise AblationError(f"{where} ({name}): set is empty; a step applies at least one fix")
        bad = set(sets) - {"all", *tasks}
        if bad:
            raise AblationError(f"{where} ({name}): set: {sorted(bad)} are not tasks; allowed: all, "
                                f"{', '.join(tasks)}")
    return spec


def rungs(spec: dict[str, Any], root: str | Path = ".") -> list[Rung]:
    """Every rung of every task, in task order then step order; each rung's params validated."""
    base = load_params(Path(root) / spec["base"])
    out: list[Rung] = []
    for task, task_keys in spec["tasks"].items():
        params = copy.deepcopy(base)
        for key, value in _mapping(spec["scale"], "scale").items():
            set_key(params, key, value, "scale")
        for key, value in _mapping(task_keys, f"tasks.{task}").items():
            set_key(params, key, value, f"tasks.{task}")
        last: Rung | None = None
        for i, step in enumerate(spec["steps"]):
            sets = _mapping(step.get("set"), "set")
            keys = {**_mapping(sets.get("all"), "set.all"), **_mapping(sets.get(task), f"set.{task}")}
            changed = {}
            for key, value in keys.items():
                where = f"steps[{i}] ({step['name']}), task {task}"
                set_key(params, key, value, where)
                if last is None or _get(last.params, key) != value:
                    changed[key] = value
            rung = Rung(task, i, step["name"], str(step["fix"]), copy.deepcopy(params), changed)
            rung.params["experiment"] = rung.name
            if last is not None and not changed:
                rung = Rung(task, i, step["name"], rung.fix, last.params, {}, same_as=last.name)
            else:
                try:
                    validate_params(rung.params)
                except ParamsError as e:
                    raise AblationError(f"rung {rung.name} (step {step['name']!r} on task {task!r}) is not a "
                                        f"valid experiment:\n{e}") from None
                last = rung
            out.append(rung)
    return out


def find(spec: dict[str, Any], name: str, root: str | Path = ".") -> Rung:
    all_rungs = rungs(spec, root)
    for r in all_rungs:
        if r.name == name:
            return r
    raise AblationError(f"rung {name!r} is not in this ablation; allowed: {', '.join(r.name for r in all_rungs)}")


def built(spec: dict[str, Any], root: str | Path = ".") -> list[Rung]:
    """The rungs that run (those with their own params)."""
    return [r for r in rungs(spec, root) if r.same_as is None]


def params_text(rung: Rung, spec_path: str) -> str:
    head = (f"# Rung {rung.name} of the ablation {spec_path}: {rung.fix}.\n"
            f"# Written by `python -m multimem.ablation params`; edit the spec, not this file.\n")
    return head + yaml.safe_dump(rung.params, sort_keys=False, allow_unicode=True)


def _describe(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multimem.ablation", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="every rung: task, step, the keys it changes")
    ls.add_argument("spec")
    pr = sub.add_parser("params", help="write one rung's params.yaml")
    pr.add_argument("spec")
    pr.add_argument("rung")
    pr.add_argument("out")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    if args.command == "list":
        for r in rungs(spec):
            what = (f"same as {r.same_as}" if r.same_as else
                    ", ".join(f"{k}={_describe(v)}" for k, v in r.changed.items()) or "the base")
            print(f"{r.name:<32} {what}")
        return 0
    rung = find(spec, args.rung)
    if rung.same_as:
        raise AblationError(f"rung {rung.name} changes nothing on its task; its results are {rung.same_as}'s")
    write_text_atomic(Path(args.out), params_text(rung, args.spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
