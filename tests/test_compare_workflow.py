"""Comparing experiments (issue 15): the headline metrics, experiment branches holding only their own
results, the lock check, and - slow, real tools in a temporary repository - the README's branch
workflow on a fresh clone, `dvc metrics/plots diff` between branches, Snakemake by name."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from multimem.evaluation.headline import COMPARED, MAIN_METRIC, headline
from multimem.experiment import main as experiment_main
from multimem.params import load_params, schema
from pipeline_helpers import ROOT, project_copy, run, tiny_params

PRESETS = sorted((ROOT / "experiments").glob("*.yaml"))


OPEN = {"cmp.oracle-none.correct.effect": 0.6, "cmp.oracle-none.correct.ci_lo": 0.55,
        "cmp.oracle-none.correct.ci_hi": 0.65}  # the trained bracket is open: landmarks can be compared


def _summary(metric: str, diffs: dict[str, tuple[float, bool]]) -> dict:
    """A summary.json with memory_norm the reference of `diffs`: variant -> (effect on the scored tokens'
    accuracy, significant), as the paired per-example comparisons cmp.<variant>-memory_norm.correct.*."""
    s = {**OPEN, "memory_norm.sel_trained_top1.mean": 0.25, "memory_norm.test_ppl_oracle.mean": 10.0,
         "memory_norm.test_ppl_none.mean": 12.0, f"memory_norm.{metric}.mean": 11.0}
    for v, (d, sig) in diffs.items():
        s[f"{v}.{metric}.mean"] = 11.0 + d
        s[f"{v}.test_ppl_oracle.mean"], s[f"{v}.test_ppl_none.mean"] = 10.5, 13.0
        s.update({f"cmp.{v}-memory_norm.correct.{k}": x for k, x in (("effect", d), ("significant", sig))})
    return s


def _params(protocol: str = "selection", task: str = "continuation") -> dict:
    p = tiny_params(**{"train.variants": ["memory_norm", "learned", "hsa_mean", "hsa_encoder"]})
    p["train"]["protocol"], p["eval"]["report_split"] = protocol, "test"
    p["memories"]["task"] = task
    return p


def test_headline_keys_and_verdict() -> None:
    diffs = {"learned": (0.05, True), "hsa_mean": (-0.04, True), "hsa_encoder": (0.01, False)}
    h = headline(_params(), _summary("test_ppl", {k: v for k, v in diffs.items()}))
    assert h["metric"] == "test_ppl" and h["experiment"] == "tiny"
    assert h["bracket"] == {"oracle": 10.375, "none": 12.75, "gap": 2.375}  # means over variants; none - oracle
    assert h["learned"] == {"ppl": 11.05} and h["memory_norm"] == {"ppl": 11.0, "selection_top1": 0.25}
    assert h["verdict"] == "hsa_encoder ~ memory_norm; hsa_mean < memory_norm; learned > memory_norm"


def test_headline_main_metric_follows_protocol_and_task() -> None:
    recall = headline(_params(task="recall"), _summary("test_acc", {"learned": (0.2, True)}))
    assert recall["metric"] == "test_acc" and recall["learned"] == {"value_acc": 11.2}
    assert recall["verdict"] == "learned > memory_norm"
    assert headline(_params(), {**OPEN, "memory_norm.test_ppl.mean": 3.0})["verdict"] == \
        "no landmark variant evaluated"
    lm = _params(protocol="lm")
    assert headline(lm, _summary("test_ppl", {"learned": (-0.5, True)}))["verdict"].startswith(
        "landmarks not compared: train.protocol 'lm' has no true slot per example")


def test_headline_bracket_from_trained_reference_variants() -> None:
    p = _params(task="recall")
    p["train"]["variants"] = ["oracle", "none", "memory_norm", "learned"]
    p["eval"]["min_bracket"] = 0.5
    s = {**OPEN, "cmp.oracle-none.correct.effect": 0.3,
         "oracle.test_acc.mean": 0.6, "none.test_acc.mean": 0.3, "memory_norm.test_acc.mean": 0.35,
         "learned.test_acc.mean": 0.4, "learned.test_acc_oracle.mean": 0.9,  # a test-time swap: not used
         "cmp.learned-memory_norm.correct.effect": 0.05, "cmp.learned-memory_norm.correct.significant": True,
         "learned.choice_bal_acc.mean": 0.5}
    h = headline(p, s)
    assert h["bracket"] == {"oracle": 0.6, "none": 0.3, "gap": 0.3} and "oracle" not in h and "none" not in h
    assert h["learned"] == {"value_acc": 0.4, "task_selection_balanced": 0.5}
    assert h["verdict"].startswith("landmarks not compared: the trained oracle beats trained none by 30.0%")
    p["eval"]["min_bracket"] = 0.2
    assert headline(p, s)["verdict"] == "learned > memory_norm"
    props = schema()["properties"]
    for name in [*props["train"]["properties"]["protocol"]["enum"], *props["memories"]["properties"]["task"]["enum"]]:
        assert name in MAIN_METRIC or name == "selection"  # selection: its memories.task decides


def test_dvc_yaml_compares_shared_paths_only() -> None:
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    metrics = [next(iter(m)) if isinstance(m, dict) else m for st in dvc["stages"].values()
               for m in st.get("metrics", [])]
    assert metrics == ["metrics/headline.json"]
    for plot in dvc["plots"]:
        (definition,) = plot.values()
        (path,) = definition["y"]
        assert "${" not in path and Path(path).stem in COMPARED
        assert (ROOT / ".dvc/plots" / f"{definition['template']}.json").is_file()
    page = (ROOT / ".dvc/plots/offline.html").read_text()
    assert "{plot_divs}" in page and "vegaEmbed" in page and not re.search(r"<script[^>]*\bsrc=", page)
    ignored = subprocess.run(["git", "check-ignore", "dvc_plots/index.html", "build/x/params.yaml"], cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
    assert ignored == ["dvc_plots/index.html", "build/x/params.yaml"]


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_named_after_its_file(preset: Path) -> None:  # reports/<experiment>.html
    # main carries the v2 demo as experiment landmark_v2 (its report: reports/landmark_v2.html); every other
    # preset's experiment is its file name
    expected = "landmark_v2" if preset.stem == "landmark_v2-demo" else preset.stem
    assert load_params(preset)["experiment"] == expected


def _git(repo: Path, *args: str) -> str:
    return run(["git", *args], repo).stdout.strip()


def test_new_branch_drops_previous_results_and_refuses_untracked(tmp_path: Path, monkeypatch, capsys) -> None:
    repo = tmp_path / "repo"
    (repo / "experiments").mkdir(parents=True)
    for name in ("landmark_v1-demo", "landmark_v2-demo"):
        (repo / f"experiments/{name}.yaml").write_bytes((ROOT / f"experiments/{name}.yaml").read_bytes())
    (repo / "params.yaml").write_bytes((repo / "experiments/landmark_v2-demo.yaml").read_bytes())
    for f in ("metrics/headline.json", "metrics/landmark_v2-demo/summary.json", "reports/landmark_v2-demo.html",
              "reports/landmark_v2.html", "reports/README.md"):
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        (repo / f).write_text("{}")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.name", "test")
    _git(repo, "config", "user.email", "test@example.com")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "main: v2 results")
    monkeypatch.chdir(repo)
    (repo / "scratch.txt").write_text("x")
    with pytest.raises(SystemExit):
        experiment_main(["new", "landmark_v1-demo"])
    assert "scratch.txt has uncommitted changes" in capsys.readouterr().err
    (repo / "scratch.txt").unlink()
    experiment_main(["new", "landmark_v1-demo"])
    assert _git(repo, "ls-files").split() == ["experiments/landmark_v1-demo.yaml",
                                              "experiments/landmark_v2-demo.yaml", "params.yaml", "reports/README.md"]
    assert _git(repo, "status", "--porcelain") == ""
    assert _git(repo, "show", "main:metrics/headline.json") == "{}"  # main keeps its results


def test_check_reports_a_stale_lock(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    (repo / "code.py").write_text("print(1)\n")
    (repo / "params.yaml").write_text("lr: 1\n")
    (repo / "dvc.yaml").write_text("stages:\n  one:\n    cmd: python code.py > out.txt\n    deps: [code.py]\n"
                                   "    params: [lr]\n    outs: [out.txt]\n")
    _git(repo, "init", "-q", "-b", "main")
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "repro", "-q"], repo)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "results")
    check = ["python", "-m", "multimem.experiment", "check"]
    (repo / "out.txt").unlink()  # a fresh clone has no untracked outputs: not a problem
    assert "matches" in run(check, repo).stdout
    (repo / "code.py").write_text("print(2)\n")
    (repo / "params.yaml").write_text("lr: 2\n")
    stale = run(check, repo, check=False)
    assert stale.returncode == 2
    assert "one: code.py modified" in stale.stderr and "one: params.yaml lr modified" in stale.stderr


# ---- the real tools on a tiny experiment (slow) --------------------------------------------------------

FAST = {"train.start_steps": 4, "train.oracle_gate": 0.0, "memories.recall.num_keys": 64,
        "memories.recall.num_values": 16}  # keys some presets have (oracle start, recall task)


def _has(d: dict, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return False
        d = d[part]
    return True


def tiny_preset(name: str) -> dict:
    """experiments/<name>.yaml at the tiny scale of pipeline_helpers, still named after the preset."""
    base = ROOT / "experiments" / f"{name}.yaml"
    raw = yaml.safe_load(base.read_text())
    p = tiny_params(base, experiment=name, **{k: v for k, v in FAST.items() if _has(raw, k)})
    if p["data"]["test_fraction"] == 0:  # v1: no test split, few validation documents
        p["memories"].update(examples_test=0, examples_val=8)
    if "builder_text_tokens" in p["memories"]:
        p["memories"]["builder_text_tokens"] = min(p["memories"]["builder_text_tokens"],
                                                   p["memories"]["builder_tokens"])
    return p


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A fresh clone of a main whose committed results came from `dvc repro`, after its own `dvc repro`
    (what `make run` does there); the tiny presets stand in for experiments/*.yaml."""
    origin = project_copy(tmp_path_factory.mktemp("origin"), tiny_preset("landmark_v2-demo"))
    for name in ("landmark_v1-demo", "landmark_v2-demo"):
        (origin / f"experiments/{name}.yaml").write_text(yaml.safe_dump(tiny_preset(name), sort_keys=False))
    for report in [*origin.glob("reports/*.html"), *origin.glob("reports/*.csv")]:
        report.unlink()  # the real presets' and ablations' reports: this main's come from its tiny runs
    run(["dvc", "repro"], origin)
    run(["git", "add", "-A"], origin)
    run(["git", "commit", "-qm", "main: results"], origin)
    path = tmp_path_factory.mktemp("clone") / "multimem"
    run(["git", "clone", "-q", str(origin), str(path)], origin)
    run(["dvc", "repro"], path)
    status = _git(path, "status", "--porcelain")
    check = run(["python", "-m", "multimem.experiment", "check"], path, check=False)
    run(["git", "commit", "-qm", "dvc.lock of this clone's run", "dvc.lock"], path)  # as the README says
    return path, status, check


slow = pytest.mark.slow


@slow
def test_make_run_on_a_fresh_clone_reproduces_main(clone):
    _, status, check = clone
    assert status == "M dvc.lock"  # metrics and report byte-identical; the lock records this clone's models
    assert check.returncode == 0 and "matches" in check.stdout


@slow
def test_readme_branch_workflow_then_diffs(clone):
    clone = clone[0]
    run(["python", "-m", "multimem.experiment", "new", "landmark_v1-demo"], clone)
    run(["dvc", "repro"], clone)
    run("git add -A && git commit -qm 'v1 demo: results'", clone)
    assert _git(clone, "status", "--porcelain") == ""
    files = _git(clone, "ls-files", "metrics", "reports").split()
    assert [f for f in files if f.endswith(".html")] == ["reports/landmark_v1-demo.html"]
    assert "metrics/headline.json" in files and not [f for f in files if "landmark_v2" in f]
    run("git checkout -q main && dvc checkout -q", clone)
    assert _git(clone, "status", "--porcelain") == ""

    mdiff = run(["dvc", "metrics", "diff", "exp/landmark_v1-demo", "main", "--json"], clone).stdout
    both = {k: v for k, v in json.loads(mdiff)["metrics/headline.json"].items()
            if v["old"] is not None and v["new"] is not None}
    assert {"experiment", "metric", "memory_norm.selection_top1", "verdict"} <= set(both)
    assert (both["experiment"]["old"], both["experiment"]["new"]) == ("landmark_v1-demo", "landmark_v2-demo")
    pdiff = json.loads(run(["dvc", "plots", "diff", "exp/landmark_v1-demo", "main", "--json"], clone).stdout)
    for plot in ("learning curves", "selection accuracy", "perplexity bracket"):
        (rendered,) = pdiff["data"][plot]
        assert rendered["revisions"] == ["exp/landmark_v1-demo", "main"]
        rows = rendered["content"]["data"]["values"]
        assert {r["rev"] for r in rows} == {"exp/landmark_v1-demo", "main"}
    out = run(["dvc", "plots", "diff", "exp/landmark_v1-demo", "main"], clone).stdout
    page = (clone / "dvc_plots/index.html").read_text()
    assert "dvc_plots/index.html" in out and "vegaEmbed('#" in page and "cdn.jsdelivr" not in page
    assert _git(clone, "status", "--porcelain") == ""


@slow
def test_snakemake_default_target_and_any_preset_by_name(clone, tmp_path):
    clone = clone[0]
    fresh = tmp_path / "fresh"
    run(["git", "clone", "-q", str(clone), str(fresh)], tmp_path)
    dry = run(["snakemake", "--cores", "1", "-n"], fresh).stdout
    jobs = re.search(r"^total\s+(\d+)$", dry, re.M)
    assert jobs and int(jobs.group(1)) >= 10 and "rule all:" in dry
    run(["snakemake", "--cores", "2", "reports/landmark_v1-demo.html"], clone)
    assert "<table" in (clone / "reports/landmark_v1-demo.html").read_text()
    assert (clone / "build/landmark_v1-demo/metrics/landmark_v1-demo/summary.json").is_file()
    assert _git(clone, "status", "--porcelain") == "?? reports/landmark_v1-demo.html"  # the tree: ignored
    again = run(["snakemake", "--cores", "1", "reports/landmark_v1-demo.html"], clone)
    assert "Nothing to be done" in again.stdout + again.stderr
