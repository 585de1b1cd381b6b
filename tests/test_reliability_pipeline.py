"""Issue 14's attacks through real `dvc repro` on the tiny experiment in a temporary git repository: a bad
parameter stops the DAG at the validate stage before DVC removes any output, a corrupted run is refused
and never enters dvc.lock, and the rendered report is byte-identical across renders with its title escaped."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

from pipeline_helpers import project_copy, run, set_key, tiny_params

pytestmark = pytest.mark.slow
TITLE = "<script>alert(1)</script> & co"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny experiment (continuation task, two variants, one seed) after a full `dvc repro`, committed."""
    params = tiny_params(**{"memories.task": "continuation", "train.init_from": "base",
                            "train.variants": ["memory_norm", "learned"], "train.seeds": [0],
                            "memories.examples_train": 48, "memories.examples_val": 8, "memories.examples_test": 8,
                            "report.title": TITLE})
    path = project_copy(tmp_path_factory.mktemp("reliability"), params)
    run(["dvc", "repro"], path)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-qm", "results"], path)
    return path


def _outputs(repo: Path) -> dict[str, str]:
    """sha256 of every file of every stage output (lock files aside)."""
    return {str(f.relative_to(repo)): hashlib.sha256(f.read_bytes()).hexdigest()
            for folder in ("data", "models", "metrics", "reports")
            for f in sorted((repo / folder).rglob("*")) if f.is_file() and f.name != ".lock"}


def _edit(repo: Path, key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    set_key(params, key, value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.parametrize("attack, fragment", [
    ("typo", "unknown key 'memories.num_memoris'"),
    ("train.seeds", "train.seeds: [] has too few items"),
    ("report.figure_dpi", "report.figure_dpi: 5 is out of range"),
])
def test_a_bad_parameter_stops_dvc_before_any_output_is_removed(repo: Path, attack: str, fragment: str) -> None:
    good, before, lock = (repo / "params.yaml").read_text(), _outputs(repo), (repo / "dvc.lock").read_text()
    if attack == "typo":
        (repo / "params.yaml").write_text(good.replace("  num_memories:", "  num_memoris:", 1))
    else:
        _edit(repo, attack, [] if attack == "train.seeds" else 5)
    try:
        p = run(["dvc", "repro"], repo, check=False)
        assert p.returncode != 0 and fragment in p.stderr + p.stdout, p.stdout + p.stderr
        assert "failed to reproduce 'validate'" in p.stderr + p.stdout and "Traceback" not in p.stderr + p.stdout
        assert _outputs(repo) == before and (repo / "dvc.lock").read_text() == lock
    finally:
        (repo / "params.yaml").write_text(good)
    assert run(["dvc", "status"], repo).stdout.strip().endswith("Data and pipelines are up to date.")


def test_a_corrupted_run_is_refused_and_never_locked(repo: Path) -> None:
    best = repo / "models/learned/seed0/best.safetensors"
    lock, metrics = (repo / "dvc.lock").read_text(), _outputs(repo)
    data = bytearray(best.read_bytes())
    data[len(data) // 2:len(data) // 2 + 16] = bytes(16)
    best.write_bytes(bytes(data))
    p = run(["dvc", "repro"], repo, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "models/learned/seed0/best.safetensors was changed or corrupted" in out, out
    assert "dvc checkout --force models/learned/seed0" in out and "Traceback" not in out
    assert (repo / "dvc.lock").read_text() == lock
    assert {k: v for k, v in _outputs(repo).items() if not k.endswith("best.safetensors")} == \
        {k: v for k, v in metrics.items() if not k.endswith("best.safetensors")}
    run(["dvc", "checkout", "--force", "models/learned/seed0"], repo)  # the message's remedy
    assert run(["dvc", "status"], repo).stdout.strip().endswith("Data and pipelines are up to date.")


def test_the_report_renders_byte_identically_with_the_title_escaped(repo: Path) -> None:
    run(["python", "pipeline/report.py", "--params", "params.yaml", "--out", "reports/again.html"], repo)
    first, again = (repo / "reports/tiny.html").read_bytes(), (repo / "reports/again.html").read_bytes()
    assert first == again
    html = first.decode()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html


def test_a_valid_change_reruns_validate_without_touching_its_stamp(repo: Path) -> None:
    stamp = repo / "data/validated.json"
    before = (stamp.read_bytes(), stamp.stat().st_mtime_ns)
    _edit(repo, "report.figure_dpi", 80)
    out = run(["dvc", "repro"], repo).stdout
    assert re.findall(r"Running stage '([^']+)'", out) == ["validate", "report"]
    assert (stamp.read_bytes(), stamp.stat().st_mtime_ns) == before  # Snakemake sees no newer input either
