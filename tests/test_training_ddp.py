"""Data parallelism with 2 gloo processes on CPU: replicas stay identical and the losses match a
single process on the same global batch."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from multimem.model.transformer import TransformerLM
from multimem.training.batches import LMChunks, SelectionExamples
from multimem.training.ddp import DistInfo, destroy_process_group, init_process_group
from multimem.training.loop import LoopConfig, RunPaths, Trainer
from multimem.training.protocols import make_protocol
from test_training_workspace import lm_chunks, selection_arrays, tiny_config

WORLD = 2


def _fit(root: Path, protocol: str, dist: DistInfo) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TransformerLM(tiny_config("learned", protocol))
    proto = make_protocol(protocol, model, eval_memory="on", write_grad="differentiable")
    if protocol == "lm":
        train, val = LMChunks(lm_chunks(30, 1)), LMChunks(lm_chunks(12, 2))
    else:
        train, val = SelectionExamples(selection_arrays(30, 1)), SelectionExamples(selection_arrays(12, 2))
    cfg = LoopConfig(epochs=2, batch_size=8, lr=1e-2, weight_decay=0.01, grad_clip=1.0, patience=0, seed=0)
    summary = Trainer(model, proto, train, val, cfg, RunPaths.under(root), dist=dist).fit()
    torch.save(model.state_dict(), root / f"rank{dist.rank}.pt")
    return summary


def _worker(rank: int, port: int, root: str, protocol: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist = DistInfo(rank=rank, world_size=WORLD, local_rank=rank)
    init_process_group(dist, torch.device("cpu"))
    try:
        _fit(Path(root), protocol, dist)
    finally:
        destroy_process_group(dist)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("protocol", ["selection", "lm"])
def test_two_gloo_ranks_match_a_single_process(tmp_path: Path, protocol: str) -> None:
    single = _fit(tmp_path / "single", protocol, DistInfo())
    ddp_root = tmp_path / "ddp"
    ddp_root.mkdir()
    # 30 examples, global batch 8: the last batch of 6 is split 3 + 3
    mp.spawn(_worker, args=(_free_port(), str(ddp_root), protocol), nprocs=WORLD, join=True)
    ranks = [torch.load(ddp_root / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # replicas identical
    ref = torch.load(tmp_path / "single" / "rank0.pt", weights_only=True)
    for k in ref:
        a, b = ranks[0][k], ref[k]
        if k.endswith("query_key_value.bias"):  # the key bias has zero gradient (softmax is invariant to it):
            a, b = a.view(2, 3, -1)[:, 0::2], b.view(2, 3, -1)[:, 0::2]  # Adam turns its float noise into steps
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), k  # 1% of one Adam step (lr 1e-2)
    ddp = json.loads((ddp_root / "train_summary.json").read_text())
    assert ddp["world_size"] == WORLD and ddp["steps"] == single["steps"] == 8
    for a, b in zip(single["history"], ddp["history"]):
        for key in ("train/loss", "val/loss", "train/memory/mix_max", "val/memory/mix_max"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
