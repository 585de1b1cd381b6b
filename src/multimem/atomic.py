"""Atomic outputs: a stage's file or directory appears whole or not at all.

Everything is built under a hidden temporary name in the destination's own directory (same
filesystem, so `os.replace` is an atomic rename) and renamed into place only when the block exits
without an exception. On any exception, KeyboardInterrupt included, the temporary is removed and the
previous output, if any, is left untouched. A temporary left by a killed process (its name carries the
writer's pid) is removed by the next write of the same output. `lock_folder` keeps a second process out
of a folder another one is writing.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from multimem.params import UserError


def _sibling(path: Path, tag: str) -> Path:
    """An unused hidden name beside `path` keeping its suffix (np.save / np.savez append a missing one);
    it carries this process's pid, so a later writer can tell a dead writer's leftover."""
    return path.with_name(f".{path.stem}.{tag}-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def clean_stale(path: str | Path) -> None:
    """Remove the temporaries of `path` (`.<stem>.tmp-<pid>-*`) whose writer is no longer running; if a
    killed atomic_dir left the previous output aside (`.<stem>.old-<pid>-*`) and `path` is gone, put it back."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.(tmp|old)-(?:(\d+)-)?[0-9a-f]{{8}}{re.escape(path.suffix)}")
    if not path.parent.is_dir():
        return
    for entry in sorted(path.parent.iterdir()):
        m = pattern.fullmatch(entry.name)
        if m is None or (m.group(2) and int(m.group(2)) != os.getpid() and _alive(int(m.group(2)))):
            continue
        if m.group(1) == "old" and not (path.exists() or path.is_symlink()):
            os.replace(entry, path)
        else:
            _remove(entry)


def lock_folder(folder: str | Path) -> IO:
    """Lock `folder` (creating it) for this process: an exclusive flock on folder/.lock, held until the
    returned file is closed or the process ends. A UserError if another process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "a")  # noqa: SIM115 - closed by the caller (or at exit)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"{folder} is being written by another process (it holds {folder / '.lock'}); "
                        "wait for it to finish or stop it, then rerun") from None
    return handle


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
    clean_stale(path)
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
    clean_stale(path)
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
