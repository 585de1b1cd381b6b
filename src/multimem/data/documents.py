"""Tokenised documents: the file documents.npz that prepare writes and build_memories reads."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Documents:
    """Flat token ids of all documents (no EOS inside); document j is tokens[offsets[j]:offsets[j+1]]."""

    tokens: np.ndarray  # int32 [T]
    offsets: np.ndarray  # int64 [n_docs + 1]
    domain: np.ndarray  # int16 [n_docs], index into domains.json
    split: np.ndarray  # int8 [n_docs], 0 train, 1 val, 2 test, -1 not split by document (shuffled_chunks)

    def __len__(self) -> int:
        return len(self.domain)

    def doc(self, j: int) -> np.ndarray:
        """Token ids of document j, int32 [len_j]."""
        return self.tokens[self.offsets[j]:self.offsets[j + 1]]

    @cached_property
    def lengths(self) -> np.ndarray:
        """Tokens per document, int64 [n_docs]."""
        return np.diff(self.offsets)

    def save(self, path: str | Path) -> None:
        np.savez(path, tokens=self.tokens, offsets=self.offsets, domain=self.domain, split=self.split)

    @classmethod
    def load(cls, path: str | Path) -> "Documents":
        with np.load(path, allow_pickle=False) as f:
            return cls(f["tokens"], f["offsets"], f["domain"], f["split"])
