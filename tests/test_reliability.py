"""Faults a user or a machine causes (issue 14, and 15.8), each refused before any work with a one-line
error naming the file or parameter, or repaired; never accepted, never a traceback, nothing finished lost.

The stage entry points run as the pipeline runs them (subprocesses of pipeline/*.py) on a tiny workspace:
the data files of test_training_workspace, a scratch base and one finished train run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from multimem.atomic import atomic_dir, atomic_path, lock_folder
from multimem.data.errors import DataError
from multimem.data.manifest import write_manifest
from multimem.data.memories import build_memories
from multimem.data.prepare import prepare
from multimem.integrity import IntegrityError
from multimem.params import ParamsError, UserError, cli_main, load_params
from multimem.resources import memory_problems
from multimem.training import runs
from multimem.training.batches import DataFormatError
from multimem.training.checkpoint import CheckpointStore, CorruptCheckpointWarning, digest
from multimem.training.loop import perplexity, ppl_text
from test_training_hf import hf_folder  # noqa: F401 - fixture
from test_training_workspace import REPO, tiny_params, write_data, write_params

RUN = Path("models/learned/seed0")


def _cli(stage: str, root: Path, *args: str) -> subprocess.CompletedProcess:
    """pipeline/<stage>.py --params params.yaml <args>, run in `root` as DVC runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "pipeline" / f"{stage}.py"), "--params", "params.yaml", *args],
                          cwd=root, env=env, capture_output=True, text=True)


def _refused(p: subprocess.CompletedProcess, *fragments: str) -> str:
    """Assert exit 2 with one `error:` line holding every fragment and no traceback; return stderr."""
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and "error: " in p.stderr, p.stderr
    for f in fragments:
        assert f in p.stderr, (f, p.stderr)
    return p.stderr


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder` (the lock file aside): bytes and mtime."""
    return {str(f.relative_to(folder)): (f.read_bytes(), f.stat().st_mtime_ns)
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != ".lock"}


def _flip(path: Path, n: int = 16, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at:at + n] = bytes(b ^ 0xFF for b in data[at:at + n])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/, models/base (scratch) and the finished run models/learned/seed0; params list seed 0 only."""
    root = tmp_path_factory.mktemp("finished")
    write_data(root, n_train=32, n_val=8)
    params = tiny_params("selection", epochs=1, batch_size=8, init_from="base", variants=["learned"], seeds=[0])
    memories = root / "data" / "memories"
    (memories / "manifest.json").unlink()  # as build_memories writes it: with the params it was built from
    write_manifest(memories, {"stage": "build_memories", "params": {"memories": params["memories"]}})
    write_params(root, params)
    runs.pretrain(params, root / "data/prepared", root / "models/base")
    runs.train(params, "learned", 0, root / "data", root / "models/base", root / "models")
    return root


@pytest.fixture()
def ws(finished: Path, tmp_path: Path) -> Path:
    """A private copy of the finished workspace."""
    return Path(shutil.copytree(finished, tmp_path / "ws"))


# ---- 1, 6, 7: a finished run's folder is checked against its manifest by train and by evaluate --------------
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "summary"])
def test_a_damaged_finished_run_is_refused_by_train_and_evaluate(ws: Path, damage: str) -> None:
    run = ws / RUN
    best, summary = run / "best.safetensors", run / "train_summary.json"
    if damage == "flip":
        _flip(best)
    elif damage == "truncate":
        best.write_bytes(best.read_bytes()[:200])
    elif damage == "delete":
        best.unlink()
    else:
        summary.write_text(summary.read_text()[:-40])
    before = _snapshot(run)
    target = "train_summary.json" if damage == "summary" else "best.safetensors"
    _refused(_cli("train", ws, "--variant", "learned", "--seed", "0"), target, "dvc checkout")
    assert _snapshot(run) == before  # refused before anything was written
    _refused(_cli("evaluate", ws), str(RUN / target), "is missing" if damage == "delete" else "changed or corrupted")
    assert not (ws / "metrics").exists()


def test_a_finished_run_is_not_trained_or_rewritten_again(ws: Path) -> None:
    before = _snapshot(ws / RUN)
    p = _cli("train", ws, "--variant", "learned", "--seed", "0")
    assert p.returncode == 0, p.stderr
    assert "train: learned seed 0" in p.stdout and "resumed" not in p.stderr
    assert _snapshot(ws / RUN) == before


def test_evaluate_refuses_unfinished_and_missing_runs(ws: Path) -> None:
    params = load_params(ws / "params.yaml")
    params["train"]["seeds"] = [0, 1]
    write_params(ws, params)
    _refused(_cli("evaluate", ws), "learned-seed1", "not finished", "dvc repro train@learned-1")
    params["train"]["seeds"] = [0]
    write_params(ws, params)
    (ws / RUN / "manifest.json").unlink()  # killed after the summary, before the manifest: unfinished
    _refused(_cli("evaluate", ws), "no trained run")
    assert not (ws / "metrics").exists()


# ---- 5, 15.8: inputs are verified before they are loaded, and before the run folder is touched ---------------
def test_evaluate_verifies_the_base_model(ws: Path) -> None:
    _flip(ws / "models/base/model.safetensors", n=512)
    _refused(_cli("evaluate", ws), "models/base/model.safetensors", "changed or corrupted", "pretrain")


@pytest.mark.parametrize("fault", ["damaged-data", "stale-data", "unlisted-seed", "unlisted-variant"])
def test_a_failed_input_check_leaves_a_finished_run_untouched(ws: Path, fault: str) -> None:
    args = ["--variant", "learned", "--seed", "0"]
    if fault == "damaged-data":  # a zip the loader would fail on with BadZipFile
        (ws / "data/memories/selection_train.npz").write_bytes(b"PK\x03\x04 not a zip")
        expect = ["data/memories/selection_train.npz", "changed or corrupted"]
    elif fault == "stale-data":  # params changed, build_memories not rerun
        params = load_params(ws / "params.yaml")
        params["memories"]["examples_val"] += 1
        write_params(ws, params)
        expect = ["data/memories", "memories", "examples_val", "build_memories"]
    elif fault == "unlisted-seed":
        args, expect = ["--variant", "learned", "--seed", "7"], ["--seed 7", "train.seeds", "allowed: 0"]
    else:
        args, expect = ["--variant", "hsa_mean", "--seed", "0"], ["--variant 'hsa_mean'", "train.variants"]
    before = _snapshot(ws / "models")
    _refused(_cli("train", ws, *args), *expect)
    assert _snapshot(ws / "models") == before
    assert sorted(p.name for p in (ws / "models").iterdir()) == ["base", "learned"]


# ---- 10: one trainer per run folder ----------------------------------------------------------------------------
def test_a_second_trainer_in_the_same_run_folder_is_refused(ws: Path) -> None:
    (ws / RUN / "manifest.json").unlink()  # as if the first trainer were still running
    before = _snapshot(ws / RUN)
    held = lock_folder(ws / RUN)
    try:
        _refused(_cli("train", ws, "--variant", "learned", "--seed", "0"), str(RUN), "another process")
    finally:
        held.close()
    assert _snapshot(ws / RUN) == before


# ---- 2, 3: every split a stage needs has a minimum size, checked where it is made -------------------------------
def _text_dir(root: Path, domains: int, docs: int, words: int = 60) -> Path:
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(300)]
    for d in range(domains):
        folder = root / "texts" / f"domain{d}"
        folder.mkdir(parents=True)
        for j in range(docs):
            (folder / f"{j}.txt").write_text(" ".join(rng.choice(vocab, words)) + "\n")
    return root / "texts"


def _data(text_dir: Path, **changes) -> dict:
    data = dict(tiny_params()["data"], source="text_dir", text_dir=str(text_dir), vocab_size=300, chunk_len=16,
                max_chunks=0, max_documents=0)
    return {**data, **changes}


def test_prepare_refuses_empty_val_and_test_splits(tmp_path: Path) -> None:
    small = _text_dir(tmp_path, domains=4, docs=3)  # round(3 * 0.1) = 0 val and test documents per domain
    with pytest.raises(DataError, match=r"val and test split has no LM chunk.*data\.val_fraction"):
        prepare(_data(small), tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_prepare_refuses_a_chunk_len_longer_than_a_split(tmp_path: Path) -> None:
    texts = _text_dir(tmp_path, domains=4, docs=10)
    with pytest.raises(DataError, match=r"data\.chunk_len 8192"):
        prepare(_data(texts, chunk_len=8192), tmp_path / "prepared")
    with pytest.raises(DataError, match=r"val and test split.*data\.max_chunks \(3"):
        prepare(_data(texts, max_chunks=3), tmp_path / "prepared")  # 3 chunks in all: val and test get none
    assert not (tmp_path / "prepared").exists()


def test_build_memories_refuses_a_split_it_was_asked_for_but_has_no_documents(tmp_path: Path) -> None:
    texts = _text_dir(tmp_path, domains=4, docs=10)
    prepared = tmp_path / "prepared"
    prepare(_data(texts), prepared)
    with np.load(prepared / "documents.npz") as f:  # a prepared folder whose val documents went to train
        arrays = dict(f)
    arrays["split"][arrays["split"] == 1] = 0
    np.savez(prepared / "documents.npz", **arrays)
    fields = json.loads((prepared / "manifest.json").read_text())
    fields.pop("files")
    write_manifest(prepared, fields)
    memories = dict(tiny_params()["memories"], num_memories=3, segment_len=8, target_len=8, examples_val=16,
                    builder_tokens=16, query_len=8)
    with pytest.raises(DataError, match=r"memories\.examples_val: 16 asked for.*no val documents"):
        build_memories(memories, prepared, tmp_path / "memories")
    assert not (tmp_path / "memories").exists()


def test_training_refuses_an_empty_split_and_digests_empty_tensors(ws: Path) -> None:
    assert digest({"order": torch.zeros(0, dtype=torch.int64)}) != digest({"order": torch.zeros(1, dtype=torch.int64)})
    np.save(ws / "data/prepared/lm_train.npy", np.zeros((0, 17), dtype=np.int32))
    (ws / "data/prepared/manifest.json").unlink()
    write_manifest(ws / "data/prepared", {"stage": "prepare"})
    params, before = tiny_params("lm", epochs=1, init_from="base"), _snapshot(ws / "models")
    with pytest.raises(DataFormatError, match=r"lm_train\.npy holds no examples"):
        runs.train(params, "learned", 0, ws / "data", ws / "models/base", ws / "models")
    with pytest.raises(DataFormatError, match=r"lm_train\.npy holds no examples"):
        runs.pretrain({**params, "pretrain": {**params["pretrain"], "init": "pretrain"}}, ws / "data/prepared",
                      ws / "models/base2")
    assert _snapshot(ws / "models") == before and not (ws / "models/base2").exists()


# ---- 6: tracebacks turned into one line naming the file ------------------------------------------------------
def test_a_non_utf8_document_is_named(tmp_path: Path) -> None:
    texts = _text_dir(tmp_path, domains=4, docs=10)
    bad = texts / "domain2" / "latin1.txt"
    bad.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt: not UTF-8"):
        prepare(_data(texts), tmp_path / "prepared")


@pytest.mark.parametrize("damage", ["truncated", "bin-without-the-weights"])
def test_a_bad_hf_checkpoint_is_named(tmp_path: Path, hf_folder: Path, damage: str) -> None:  # noqa: F811
    weights = hf_folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:  # transformers would load it and start every weight from random values, with a warning
        weights.unlink()
        torch.save({"state": {"x": torch.zeros(2)}}, hf_folder / "pytorch_model.bin")
    params = tiny_params("selection", init_from="base")
    params["pretrain"].update(init=f"hf:{hf_folder}", epochs=0)
    with pytest.raises(UserError, match=r"pretrain\.init: 'hf:.*cannot be loaded"):
        runs.pretrain(params, tmp_path / "prepared", tmp_path / "base")
    assert not (tmp_path / "base").exists()


def test_out_of_memory_and_disk_full_are_one_line(capsys: pytest.CaptureFixture) -> None:
    @cli_main
    def fill_disk() -> None:
        with open("/dev/full", "w") as f:
            f.write("x" * 100_000)
            f.flush()

    @cli_main
    def allocate() -> None:
        torch.empty(1 << 62, dtype=torch.uint8)

    for fn, fragment in ((fill_disk, "no space left on the device"), (allocate, "out of memory")):
        with pytest.raises(SystemExit) as exit_:
            fn()
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith(f"error: {fragment}") and "Traceback" not in err


def test_sizes_beyond_this_machines_memory_are_refused_by_validate(ws: Path) -> None:
    params = load_params(ws / "params.yaml")
    params["model"].update(vocab_size=1_048_576, hidden=65_536)
    params["memories"]["examples_train"] = 100_000_000
    problems = memory_problems(params, available=2**30)
    assert len(problems) == 2
    assert "model.vocab_size 1048576, model.hidden 65536" in problems[0] and "parameters" in problems[0]
    assert problems[1].startswith("memories.examples_train") and "1.0 GiB of memory" in problems[1]
    write_params(ws, params)  # the model needs terabytes: more than any machine this runs on
    _refused(_cli("validate", ws), "model.vocab_size", "with gradients and AdamW state", "of memory")
    assert not (ws / "data/validated.json").exists()


def test_report_without_metrics_is_named(ws: Path) -> None:
    _refused(_cli("report", ws), "metrics/", "summary.json is missing", "evaluate")
    assert not (ws / "reports").exists()


# ---- 4 (the stage itself; under dvc in test_reliability_pipeline.py), 8: params loading --------------------------
def test_validate_writes_a_constant_stamp_once_and_refuses_a_typo(ws: Path) -> None:
    p = _cli("validate", ws)
    assert p.returncode == 0, p.stderr
    stamp = ws / "data/validated.json"
    first = (stamp.read_bytes(), stamp.stat().st_mtime_ns)
    params = load_params(ws / "params.yaml")
    params["train"]["lr"] = 0.5
    write_params(ws, params)
    assert _cli("validate", ws).returncode == 0
    assert (stamp.read_bytes(), stamp.stat().st_mtime_ns) == first  # nothing downstream sees a change
    text = (ws / "params.yaml").read_text().replace("  num_memories:", "  num_memoris:", 1)
    (ws / "params.yaml").write_text(text)
    _refused(_cli("validate", ws), "num_memoris", "allowed:")


BOMB = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
MERGE_BOMB = "a: &a {x: 1, y: 2}\n" + "".join(
    f"{c}: &{c} {{<<: [{', '.join([f'*{p}'] * 10)}], z{c}: 1}}\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("text, fragment", [
    (BOMB, "expand the parameters to [0-9,]{13} values"),
    (MERGE_BOMB, "expand the parameters to"),
    ("a: &a [1, *a]\n", "contain themselves"),
], ids=["alias-bomb", "merge-key-bomb", "recursive-alias"])
def test_yaml_alias_bombs_are_refused_before_validation(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=fragment) as err:
        load_params(path)
    assert str(err.value).startswith(str(path))


def test_scalar_aliases_still_load(tmp_path: Path) -> None:
    params = tiny_params()
    text = yaml.safe_dump(params, sort_keys=False).replace("num_memories: 4", "num_memories: &n 4", 1)
    text = text.replace("num_memories: 4", "num_memories: *n")
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml")["model"]["memory"]["num_memories"] == 4


# ---- 10: leftovers of killed writers, messages -----------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    out, dead = tmp_path / "prepared", _dead_pid()
    stale = tmp_path / f".prepared.tmp-{dead}-0123abcd"
    legacy = tmp_path / ".prepared.tmp-89abcdef"  # the name before writers put their pid in it
    live = tmp_path / f".prepared.tmp-{os.getppid()}-00000000"  # a writer still running
    other = tmp_path / f".other.tmp-{dead}-0123abcd"  # another output's
    for d in (stale, legacy, live, other):
        (d / "sub").mkdir(parents=True)
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["prepared", live.name, other.name])
    file_tmp = tmp_path / f".x.tmp-{dead}-0123abcd.json"
    file_tmp.write_text("partial")
    with atomic_path(tmp_path / "x.json") as tmp:
        tmp.write_text("{}")
    assert not file_tmp.exists()


def test_an_output_left_aside_by_a_killed_replace_is_put_back(tmp_path: Path) -> None:
    aside = tmp_path / f".prepared.old-{_dead_pid()}-0123abcd"  # killed between its two renames
    aside.mkdir()
    (aside / "kept").write_text("previous output")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "prepared"):
            raise RuntimeError("this write fails too")
    assert (tmp_path / "prepared" / "kept").read_text() == "previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_a_diverged_perplexity_prints_short() -> None:
    assert ppl_text(perplexity(1e9)) == "1.01e+304" and ppl_text(214.256) == "214.26"


def test_no_fall_back_message_without_a_previous_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    tmp_path.joinpath("last.pt").write_bytes(b"truncated")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert store.load_latest() is None
    messages = [str(w.message) for w in caught if w.category is CorruptCheckpointWarning]
    assert len(messages) == 1 and "starts from the beginning" in messages[0] and "falling back" not in messages[0]
