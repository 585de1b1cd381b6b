"""Data parallelism under `torchrun` (gloo on CPU, nccl on CUDA).

    torchrun --standalone --nproc_per_node=2 pipeline/train.py --params params.yaml --variant learned --seed 0

Each rank holds a full model replica and a shard of every global batch (batches.batch_rows). Gradients
are summed over ranks by one all-reduce of a flat buffer after backward, each rank's loss being its
token-loss sum divided by the GLOBAL token count, so the update equals the single-process one on the
same global batch. This is done by hand rather than with `DistributedDataParallel` because the
selection protocol writes memories through `model.write_memory` (outside `forward`, which DDP's
reducer would not see) and some landmarks leave parameters unused. Rank 0 logs and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist

from multimem.model.memory_bank import MemoryBank
from multimem.training.batches import Shard


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job; world_size 1 means single-process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world_size)


def env_dist_info() -> DistInfo:
    """Read RANK / WORLD_SIZE / LOCAL_RANK as set by torchrun (defaults: single process)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_process_group(info: DistInfo, device: torch.device) -> None:
    """Join the process group (no-op for a single process)."""
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def destroy_process_group(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of `t` over ranks (in place; returned for chaining)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_parameters(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if info.enabled:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def sum_gradients(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Sum `.grad` over ranks with one flat all-reduce. A parameter with no grad on any rank keeps
    `grad=None` (AdamW skips it, as in a single process); one missing on some ranks counts as zeros."""
    if not info.enabled:
        return
    params = [p for p in params if p.requires_grad]
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)  # [P]
    if params and params[0].device.type == "cuda":
        has_grad = has_grad.to(params[0].device)
    dist.all_reduce(has_grad, op=dist.ReduceOp.SUM)
    params = [p for p, h in zip(params, has_grad.tolist()) if h > 0]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])  # [n_params]
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def average_shared_bank(bank: MemoryBank, local_batch: int, info: DistInfo) -> None:
    """After a write to a bank shared by the batch (lm protocol), make every rank's bank the one a
    single process would hold for the global batch: a write adds a batch MEAN to the (identical)
    previous state, so the batch-size-weighted mean of the ranks' states is the global state."""
    if not info.enabled:
        return
    weight = torch.tensor([float(local_batch)], device=bank.device)
    total = all_reduce_sum(weight.clone(), info)
    for name in ("M", "z", "key_sum", "keys"):
        t = getattr(bank, name) * weight
        setattr(bank, name, all_reduce_sum(t, info) / total)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
