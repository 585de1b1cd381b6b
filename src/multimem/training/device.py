"""Device choice, precision and determinism for a training run.

CPU runs are float32 and bit-reproducible (`torch.use_deterministic_algorithms(True)` plus a fixed
thread count). CUDA runs use bf16 autocast, TF32 matmuls and fused AdamW: fast, not bit-reproducible.
"""

from __future__ import annotations

import contextlib
import random
from typing import ContextManager

import numpy as np
import torch

from multimem.params import UserError

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(UserError, ValueError):
    """`train.device` names a device this machine does not have or an unknown value."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` -> cuda if available else cpu; `cuda` -> cuda:<local_rank> (error if absent)."""
    if name not in DEVICES:
        raise DeviceError(f"train.device={name!r}; allowed: {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("train.device='cuda' but no CUDA device is available; use 'auto' or 'cpu'")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed python, numpy's global state and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_backend(device: torch.device, threads: int) -> None:
    """CPU: deterministic algorithms and `threads` intra-op threads. CUDA: TF32 on."""
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
        # deterministic mode NaN-fills every new tensor (~14% of a small step); results never read it
        torch.utils.deterministic.fill_uninitialized_memory = False
        if threads > 0:
            torch.set_num_threads(threads)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device) -> ContextManager:
    """bf16 autocast on CUDA; a no-op (float32) on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_adamw(
    params, lr: float, weight_decay: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW; the fused kernel on CUDA, the default (foreach) implementation on CPU."""
    fused = device.type == "cuda"
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
