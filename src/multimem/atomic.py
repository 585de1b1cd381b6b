"""Atomic outputs: a stage's file or directory appears whole or not at all.

Everything is built under a hidden temporary name in the destination's own directory (same
filesystem, so `os.replace` is an atomic rename) and renamed into place only when the block exits
without an exception. On any exception, KeyboardInterrupt included, the temporary is removed and the
previous output, if any, is left untouched.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _sibling(path: Path, tag: str) -> Path:
    """An unused hidden name beside `path` keeping its suffix (np.save / np.savez append a missing one)."""
    return path.with_name(f".{path.stem}.{tag}-{secrets.token_hex(4)}{path.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file's (or a directory entry's) data to disk; best effort where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path (not yet created) beside `path`; on success it replaces `path`.

        with atomic_path("data/prepared/documents.npz") as tmp:
            np.savez(tmp, tokens=tokens)

    Raises FileNotFoundError if the block wrote nothing to the temporary path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written for {path} (temporary {tmp} missing)")
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; on success it replaces `path` as a whole.

    The old `path` (directory or file) is first renamed aside, then the new one renamed in, then the
    old one deleted; if the second rename fails the old one is put back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        old = _sibling(path, "old")
        had_old = path.exists() or path.is_symlink()
        if had_old:
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if had_old:
                os.replace(old, path)
            raise
        _fsync(path.parent)
        if had_old:
            _remove(old)
    except BaseException:
        _remove(tmp)
        raise


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write `obj` as JSON (sorted keys, indent 2, trailing newline) to `path` atomically."""
    write_text_atomic(path, json.dumps(obj, sort_keys=True, indent=2) + "\n")
