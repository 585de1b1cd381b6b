"""Atomic outputs (all or nothing, no temporaries left) and manifest integrity checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from multimem.atomic import atomic_dir, atomic_path, write_json_atomic, write_text_atomic
from multimem.integrity import IntegrityError, sha256_file, verify_manifest
from multimem.params import UserError

INTERRUPTS = [RuntimeError("boom"), KeyboardInterrupt()]
IDS = ["exception", "keyboard-interrupt"]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path_writes_and_replaces(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "a.txt"
    for text in ("first", "second"):
        with atomic_path(out) as tmp:
            assert tmp.parent == out.parent and not tmp.exists()
            tmp.write_text(text)
            assert not out.exists() or out.read_text() != text  # not visible before the block ends
        assert out.read_text() == text
    assert names(out.parent) == ["a.txt"]


def test_atomic_path_keeps_suffix_for_numpy(tmp_path: Path) -> None:
    out = tmp_path / "x.npy"
    with atomic_path(out) as tmp:
        np.save(tmp, np.arange(3))
    assert np.load(out).tolist() == [0, 1, 2] and names(tmp_path) == ["x.npy"]


@pytest.mark.parametrize("exc", INTERRUPTS, ids=IDS)
@pytest.mark.parametrize("existing", [None, "old"], ids=["new", "over-existing"])
def test_atomic_path_failure_leaves_old_output_and_no_temp(tmp_path: Path, exc: BaseException,
                                                           existing: str | None) -> None:
    out = tmp_path / "a.json"
    if existing is not None:
        out.write_text(existing)
    with pytest.raises(type(exc)):
        with atomic_path(out) as tmp:
            tmp.write_text("partial")
            raise exc
    assert names(tmp_path) == ([] if existing is None else ["a.json"])
    if existing is not None:
        assert out.read_text() == existing


def test_atomic_path_without_write_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(tmp_path / "a.txt"):
            pass
    assert names(tmp_path) == []


@pytest.mark.parametrize("existing", [None, "dir", "file"])
def test_atomic_dir_replaces_whole_directory(tmp_path: Path, existing: str | None) -> None:
    out = tmp_path / "prepared"
    if existing == "dir":
        out.mkdir()
        (out / "stale.txt").write_text("stale")
    elif existing == "file":
        out.write_text("a file")
    with atomic_dir(out) as tmp:
        assert tmp.is_dir() and tmp.parent == tmp_path and names(tmp) == []
        (tmp / "new.txt").write_text("new")
    assert names(out) == ["new.txt"] and names(tmp_path) == ["prepared"]


@pytest.mark.parametrize("exc", INTERRUPTS, ids=IDS)
@pytest.mark.parametrize("existing", [False, True], ids=["new", "over-existing"])
def test_atomic_dir_failure_leaves_old_output_and_no_temp(tmp_path: Path, exc: BaseException, existing: bool) -> None:
    out = tmp_path / "memories"
    if existing:
        out.mkdir()
        (out / "good.npz").write_text("good")
    with pytest.raises(type(exc)):
        with atomic_dir(out) as tmp:
            (tmp / "half.npz").write_text("half")
            raise exc
    assert names(tmp_path) == (["memories"] if existing else [])
    if existing:
        assert names(out) == ["good.npz"]


def test_write_json_atomic_format(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    write_json_atomic(out, {"b": 1, "a": [1, 2]})
    assert out.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    write_text_atomic(out, "x")
    assert out.read_text() == "x" and names(tmp_path) == ["m.json"]


# --- integrity ---

def make_stage_dir(root: Path) -> Path:
    """data/prepared-like directory: two files and a manifest with their sha256."""
    d = root / "prepared"
    (d / "sub").mkdir(parents=True)
    (d / "tokens.bin").write_bytes(bytes(range(256)) * 10)
    (d / "sub" / "domains.json").write_text('["Arts"]')
    files = {rel: sha256_file(d / rel) for rel in ("tokens.bin", "sub/domains.json")}
    (d / "manifest.json").write_text(json.dumps({"files": files}))
    return d


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1000)
    assert sha256_file(path, block_size=7) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_verify_manifest_accepts_intact_directory(tmp_path: Path) -> None:
    d = make_stage_dir(tmp_path)
    assert set(verify_manifest(d)["files"]) == {"tokens.bin", "sub/domains.json"}


def test_verify_manifest_detects_tampered_byte(tmp_path: Path) -> None:
    d = make_stage_dir(tmp_path)
    data = bytearray((d / "tokens.bin").read_bytes())
    data[1234] ^= 1
    (d / "tokens.bin").write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as err:
        verify_manifest(d)
    msg = str(err.value)
    assert "tokens.bin was changed or corrupted" in msg and "rerun stage prepare" in msg
    assert isinstance(err.value, UserError)


@pytest.mark.parametrize("damage, fragment", [
    (lambda d: (d / "sub" / "domains.json").unlink(), "domains.json is missing"),
    (lambda d: (d / "manifest.json").unlink(), "manifest.json is missing"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json is unreadable"),
    (lambda d: (d / "manifest.json").write_text('{"files": {"../x": "0"}}'), "points outside"),
], ids=["file-missing", "manifest-missing", "manifest-corrupt", "path-escape"])
def test_verify_manifest_problems_name_file_and_stage(tmp_path: Path, damage, fragment: str) -> None:
    d = make_stage_dir(tmp_path)
    damage(d)
    with pytest.raises(IntegrityError, match="rerun stage build_memories") as err:
        verify_manifest(d, stage="build_memories")
    assert fragment in str(err.value)
