"""Early stopping on validation loss."""

from __future__ import annotations

import math
from typing import Any


class EarlyStopping:
    """Track the best (lowest) validation loss; stop after `patience` epochs without improvement.

    v1: patience 5, best epoch 7 -> epochs 8..12 do not improve -> stop after epoch 12.
    `patience <= 0` never stops. An epoch improves when `value < best - min_delta`.
    Epochs are numbered from 1.
    """

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0

    def step(self, epoch: int, value: float) -> bool:
        """Record epoch `epoch`'s validation loss; True if it is the new best."""
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
