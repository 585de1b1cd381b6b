"""The whole pipeline through the real tools, on a tiny experiment in a temporary git repository:
dvc repro, a no-op rerun, a report-only change, params/metrics diff between two branches,
the same report through Snakemake, and the papermill HTML."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from pipeline_helpers import project_copy, run, set_key, tiny_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The tiny experiment after one full `dvc repro`."""
    path = project_copy(tmp_path_factory.mktemp("dvc"), tiny_params())
    run(["dvc", "repro"], path)
    return path


def test_dvc_repro_runs_the_whole_dag(repo):
    summary = json.loads((repo / "metrics/tiny/summary.json").read_text())
    assert any(k.startswith("learned.") for k in summary) and any(k.startswith("memory_norm.") for k in summary)
    for v in ("memory_norm", "learned"):
        for s in (0, 1):
            assert (repo / f"models/{v}/seed{s}/best.safetensors").is_file()
            assert (repo / f"metrics/tiny/runs/{v}-seed{s}.json").is_file()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {"prepare", "build_memories", "pretrain", "evaluate", "report"} <= set(lock["stages"])
    assert {f"train@{v}-{s}" for v in ("memory_norm", "learned") for s in (0, 1)} <= set(lock["stages"])


def test_report_html_is_self_contained_with_tables(repo):
    html = (repo / "reports/tiny.html").read_text()
    assert "<table" in html and "data:image/png;base64" in html
    for heading in ("Can this run compare landmarks at all?", "Landmarks: accuracy", "Paired comparisons",
                    "Side experiment", "What changed from v1 to v2"):
        assert heading in html
    assert re.search(r"This run (can|cannot) compare landmarks", html)  # the validity statement, computed
    assert not re.search(r"<script[^>]*src=\"https?://", html)
    assert "Traceback" not in html


def test_second_repro_is_a_no_op(repo):
    out = run(["dvc", "repro"], repo).stdout
    assert "Running stage" not in out
    assert run(["dvc", "status"], repo).stdout.strip().endswith("Data and pipelines are up to date.")


def test_report_parameter_reruns_only_the_report(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    set_key(params, "report.figure_dpi", 80)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], repo).stdout
    ran = re.findall(r"Running stage '([^']+)'", out)
    assert ran == ["validate", "report"]  # validate checks every change of params.yaml; its stamp stays the same


def test_params_and_metrics_diff_between_branches(repo):
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny: results"], repo)
    run(["git", "checkout", "-qb", "exp/other"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    set_key(params, "train.lr", 0.003 if params["train"]["lr"] != 0.003 else 0.002)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "other: another lr"], repo)
    pdiff = run(["dvc", "params", "diff", "main", "exp/other"], repo).stdout
    main_lr = tiny_params()["train"]["lr"]
    assert "train.lr" in pdiff and str(main_lr) in pdiff and str(params["train"]["lr"]) in pdiff
    mdiff = run(["dvc", "metrics", "diff", "main", "exp/other"], repo).stdout
    assert "metrics/headline.json" in mdiff and "learned." in mdiff  # the one DVC metric (issue 15)


def test_snakemake_builds_the_same_report(repo, tmp_path):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    set_key(params, "train.lr", tiny_params()["train"]["lr"])  # main's: both tools run one experiment
    set_key(params, "report.figure_dpi", 110)
    other = project_copy(tmp_path, params)
    run(["snakemake", "--cores", "1", "reports/tiny.html"], other)
    assert (other / "reports/tiny.html").is_file()
    run(["git", "checkout", "-q", "main"], repo)
    ours = json.loads((repo / "metrics/tiny/summary.json").read_text())
    theirs = json.loads((other / "metrics/tiny/summary.json").read_text())
    assert ours == theirs
    lint = run(["snakemake", "--lint"], other, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
