"""Training data over the stage files, and the seeded, resumable order in which batches are drawn.

Files (brief, "Data formats"):
    lm_<split>.npy           int32 [n_chunks, chunk_len]
    selection_<split>.npz    context int [E, N, segment_len], target int [E, target_len + 1],
                             true_slot int64 [E], slot_domain int16 [E, N], and for the recall task
                             target_mask bool [E, target_len] (the labels that are scored)

The order of an epoch is a pure function of (seed, epoch), so a run resumed at step k of epoch e
draws exactly the batches an uninterrupted run draws. `train.batch_size` is the GLOBAL batch: under
data parallelism each global batch is split over ranks (rank r takes rows r, r+W, r+2W, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from multimem.params import UserError


class DataFormatError(UserError, ValueError):
    """A data file does not have the arrays, dtypes or shapes the brief specifies."""


def _check(path: Path, name: str, arr: np.ndarray, ndim: int, kinds: str) -> None:
    if arr.ndim != ndim or arr.dtype.kind not in kinds:
        raise DataFormatError(
            f"{path}: array {name!r} has dtype {arr.dtype} and shape {arr.shape}; "
            f"expected an integer array with {ndim} dimensions"
        )


class LMChunks:
    """LM chunks [n_chunks, chunk_len]; a batch is {"chunks": LongTensor [B, chunk_len]}."""

    def __init__(self, chunks: np.ndarray, path: Path | str = "<array>") -> None:
        _check(Path(path), "chunks", chunks, 2, "iu")
        if chunks.shape[1] < 2:
            raise DataFormatError(f"{path}: chunk_len={chunks.shape[1]}; need >= 2 (input and label)")
        self.chunks = chunks  # [n, L]
        self.path = Path(path)

    @classmethod
    def load(cls, path: Path | str) -> "LMChunks":
        return cls(np.load(path, allow_pickle=False), path)

    def __len__(self) -> int:
        return self.chunks.shape[0]

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {"chunks": torch.from_numpy(np.asarray(self.chunks[idx], dtype=np.int64))}  # [B, L]


class SelectionExamples:
    """Selection-task examples; a batch is {"context" [B, N, Ls], "target" [B, T+1], "true_slot" [B]}."""

    KEYS = ("context", "target", "true_slot")

    def __init__(self, arrays: dict[str, np.ndarray], path: Path | str = "<arrays>") -> None:
        path = Path(path)
        missing = [k for k in self.KEYS if k not in arrays]
        if missing:
            raise DataFormatError(f"{path}: missing arrays {missing}; expected {list(self.KEYS)}")
        for name, ndim in zip(self.KEYS, (3, 2, 1)):
            _check(path, name, arrays[name], ndim, "iu")
        e = arrays["context"].shape[0]
        if arrays["target"].shape[0] != e or arrays["true_slot"].shape[0] != e:
            raise DataFormatError(f"{path}: context, target and true_slot disagree on the number of examples")
        if arrays["target"].shape[1] < 2:
            raise DataFormatError(f"{path}: target has {arrays['target'].shape[1]} columns; need >= 2")
        n = arrays["context"].shape[1]
        slots = arrays["true_slot"]
        if e and (slots.min() < 0 or slots.max() >= n):
            raise DataFormatError(f"{path}: true_slot outside 0..{n - 1}")
        mask = arrays.get("target_mask")
        if mask is not None and (mask.dtype != np.bool_ or mask.shape != (e, arrays["target"].shape[1] - 1)):
            raise DataFormatError(f"{path}: target_mask has dtype {mask.dtype} and shape {mask.shape}; expected "
                                  f"bool [{e}, {arrays['target'].shape[1] - 1}]")
        self.context = arrays["context"]  # [E, N, Ls]
        self.target = arrays["target"]  # [E, T+1]
        self.true_slot = arrays["true_slot"]  # [E]
        self.target_mask = mask  # [E, T] bool: labels scored (recall: the values), None = all
        self.path = path

    @classmethod
    def load(cls, path: Path | str) -> "SelectionExamples":
        with np.load(path, allow_pickle=False) as z:
            return cls({k: z[k] for k in z.files}, path)

    @property
    def num_slots(self) -> int:
        return self.context.shape[1]

    def __len__(self) -> int:
        return self.context.shape[0]

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            "context": torch.from_numpy(np.asarray(self.context[idx], dtype=np.int64)),  # [B, N, Ls]
            "target": torch.from_numpy(np.asarray(self.target[idx], dtype=np.int64)),  # [B, T+1]
            "true_slot": torch.from_numpy(np.asarray(self.true_slot[idx], dtype=np.int64)),  # [B]
            **({} if self.target_mask is None else {"target_mask": torch.from_numpy(self.target_mask[idx])}),  # [B, T]
        }


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Permutation of range(n) for `epoch` (0-based), a pure function of (seed, epoch)."""
    if not shuffle:
        return np.arange(n)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).numpy()


@dataclass(frozen=True)
class Shard:
    """The position of this process among data-parallel ranks."""

    rank: int = 0
    world_size: int = 1


def steps_per_epoch(n: int, batch_size: int, shard: Shard = Shard(), max_steps: int = 0) -> int:
    """Global batches per epoch: ceil(n / batch_size), less a last batch smaller than world_size
    (it could not give every rank an example), capped at `max_steps` when > 0."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; allowed: >= 1")
    if batch_size < shard.world_size:
        raise ValueError(f"batch_size={batch_size} is smaller than the world size {shard.world_size}")
    full, rest = divmod(n, batch_size)
    steps = full + (1 if rest >= shard.world_size else 0)
    return min(steps, max_steps) if max_steps > 0 else steps


def batch_rows(order: np.ndarray, step: int, batch_size: int, shard: Shard = Shard()) -> np.ndarray:
    """Rows of global batch `step` that belong to this rank."""
    rows = order[step * batch_size : (step + 1) * batch_size]  # [<=batch_size]
    return rows[shard.rank :: shard.world_size]
