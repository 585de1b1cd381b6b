"""Device choice, precision and determinism for a training run.

CPU runs are float32 and bit-reproducible (`torch.use_deterministic_algorithms(True)` plus a fixed
thread count). CUDA runs use fused AdamW and, with `train.precision` bf16 (v2 default), bf16 autocast and
TF32 matmuls: fast, not bit-reproducible; with precision float32 (v1 ran float32) neither autocast nor TF32.
"""

from __future__ import annotations

import contextlib
import random
from typing import ContextManager

import numpy as np
import torch

from multimem.params import UserError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("float32", "bf16")  # train.precision (v1 float32)


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


def check_precision(precision: str) -> str:
    """`precision` if it is one of PRECISIONS, else DeviceError naming train.precision."""
    if precision not in PRECISIONS:
        raise DeviceError(f"train.precision={precision!r}; allowed: {', '.join(PRECISIONS)}")
    return precision


def configure_backend(device: torch.device, threads: int, precision: str = "bf16") -> None:
    """CPU: deterministic algorithms and `threads` intra-op threads. CUDA: TF32 on for precision bf16,
    off for float32."""
    tf32 = check_precision(precision) == "bf16"
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
        # deterministic mode NaN-fills every new tensor (~14% of a small step); results never read it
        torch.utils.deterministic.fill_uninitialized_memory = False
        if threads > 0:
            torch.set_num_threads(threads)
    else:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def autocast(device: torch.device, precision: str = "bf16") -> ContextManager:
    """bf16 autocast on CUDA with precision bf16; a no-op (float32) on CPU and with precision float32."""
    if check_precision(precision) == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_adamw(
    params, lr: float, weight_decay: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW; the fused kernel on CUDA, the default (foreach) implementation on CPU."""
    fused = device.type == "cuda"
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
