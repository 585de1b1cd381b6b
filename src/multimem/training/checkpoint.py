"""Resumable checkpoints: atomic writes, the previous good one kept, corruption detected.

A checkpoint is one `torch.save` file holding only tensors and plain python values (so it loads with
`torch.load(weights_only=True)`) plus a sha256 digest of its own content. `save` writes a temp file
in the same folder, moves `last.pt` to `prev.pt`, then fsyncs the temp file and renames it `last.pt`
(multimem.atomic). `load_latest` returns `last.pt` if it loads and its digest matches, else warns and
falls back to `prev.pt`; a corrupt file is renamed `*.corrupt` so the next save cannot rotate it
over the good one.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multimem.atomic import atomic_path, clean_stale

FORMAT = "multimem-checkpoint-1"
LAST, PREV = "last.pt", "prev.pt"


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint file could not be read or failed its digest check."""


def _feed(h: "hashlib._Hash", obj: Any) -> None:
    """Hash `obj` (nested dict/list/tuple of tensors and plain values) in a canonical order."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():  # an empty tensor has no bytes (and .view(uint8) refuses its strides)
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"V{type(obj).__name__}:{obj!r}".encode())


def digest(obj: Any) -> str:
    """sha256 hex digest of a checkpoint payload."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def capture_rng() -> dict[str, Any]:
    """RNG states of torch (CPU, CUDA), numpy's global generator and python's `random`, as tensors
    and plain values."""
    np_state = np.random.get_state()  # ('MT19937', uint32[624], pos, has_gauss, cached_gauss)
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gauss": float(np_state[4]),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


class CheckpointStore:
    """`last.pt` and `prev.pt` in one folder."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)

    @property
    def last(self) -> Path:
        return self.folder / LAST

    @property
    def prev(self) -> Path:
        return self.folder / PREV

    def save(self, payload: dict[str, Any]) -> Path:
        """Write `payload` atomically as `last.pt`; the former `last.pt` becomes `prev.pt`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"format": FORMAT, "payload": payload, "digest": digest(payload)}
        with atomic_path(self.last) as tmp:
            torch.save(record, tmp)
            if self.last.exists():  # rotate only once the new file is fully written
                os.replace(self.last, self.prev)
        return self.last

    def _read(self, path: Path) -> dict[str, Any]:
        record = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        if digest(record["payload"]) != record["digest"]:
            raise ValueError("content does not match its sha256 digest")
        return record["payload"]

    def load_latest(self) -> tuple[dict[str, Any], Path] | None:
        """The newest readable checkpoint and its path, or None if there is none."""
        clean_stale(self.last)  # a save that was killed leaves its temporary
        for path in (self.last, self.prev):
            if not path.exists():
                continue
            try:
                return self._read(path), path
            except Exception as err:  # any failure to read means: do not trust this file
                bad = path.with_name(path.name + ".corrupt")
                os.replace(path, bad)
                then = ("falling back to the previous checkpoint" if path == self.last and self.prev.exists()
                        else "no other checkpoint, so the run starts from the beginning")
                msg = (f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err}); "
                       f"moved to {bad.name}, {then}")
                warnings.warn(msg, CorruptCheckpointWarning, stacklevel=2)
                print(f"WARNING: {msg}", file=sys.stderr)
        return None

    def clear(self) -> None:
        """Remove every checkpoint file of this store (a fresh run)."""
        for path in (self.last, self.prev):
            path.unlink(missing_ok=True)
