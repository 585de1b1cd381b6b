"""Training library: batches, early stopping, checkpoints, base init, protocols, the loop."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from multimem.model.transformer import TransformerLM
from multimem.training.base_init import BaseMismatchError, init_from_base
from multimem.training.batches import (
    DataFormatError,
    LMChunks,
    SelectionExamples,
    Shard,
    batch_rows,
    epoch_order,
    steps_per_epoch,
)
from multimem.training.checkpoint import CheckpointStore, CorruptCheckpointWarning, capture_rng, restore_rng
from multimem.training.early_stopping import EarlyStopping
from multimem.training.loop import LoopConfig, NonFiniteError, RunPaths, Trainer
from multimem.training.protocols import make_protocol
from test_training_workspace import N_MEM, lm_chunks, selection_arrays, tiny_config

LANDMARKS = ["memory_norm", "learned", "hsa_mean", "hsa_encoder"]


def _data(protocol: str, n: int = 32):
    if protocol == "lm":
        return LMChunks(lm_chunks(n, 1)), LMChunks(lm_chunks(8, 2))
    return SelectionExamples(selection_arrays(n, 1)), SelectionExamples(selection_arrays(8, 2))


def _trainer(tmp_path: Path, protocol: str, landmark: str, epochs: int = 3, **loop) -> Trainer:
    torch.set_num_threads(1)  # 2 cores shared with other work: more threads only spin
    torch.manual_seed(0)
    model = TransformerLM(tiny_config(landmark, protocol))
    proto = make_protocol(protocol, model, eval_memory="off" if protocol == "lm" else "on",
                          write_grad="detached" if protocol == "lm" else "differentiable")
    train, val = _data(protocol)
    cfg = LoopConfig(**{"epochs": epochs, "batch_size": 8, "lr": 1e-2, "weight_decay": 0.01, "grad_clip": 1.0,
                        "patience": 0, "seed": 0, "checkpoint_every": 3, **loop})
    return Trainer(model, proto, train, val, cfg, RunPaths.under(tmp_path))


# ---- batches ---------------------------------------------------------------------------------------
def test_epoch_order_is_a_seeded_permutation() -> None:
    a, b = epoch_order(10, seed=3, epoch=1), epoch_order(10, seed=3, epoch=1)
    assert (a == b).all() and sorted(a) == list(range(10))
    assert not (a == epoch_order(10, seed=3, epoch=2)).all()
    assert (epoch_order(5, 0, 0, shuffle=False) == np.arange(5)).all()


def test_rank_shards_cover_each_global_batch_once() -> None:
    order = epoch_order(23, 0, 0)
    n = steps_per_epoch(23, 8, Shard(0, 2))
    assert n == 3  # 8 + 8 + 7
    for step in range(n):
        rows = np.concatenate([batch_rows(order, step, 8, Shard(r, 2)) for r in range(2)])
        assert sorted(rows) == sorted(order[step * 8 : (step + 1) * 8])
    assert steps_per_epoch(17, 8, Shard(0, 2)) == 2  # a last batch of 1 cannot feed 2 ranks
    assert steps_per_epoch(23, 8, max_steps=2) == 2


def test_data_format_errors_name_the_problem() -> None:
    with pytest.raises(DataFormatError, match="chunks"):
        LMChunks(np.zeros((4,), np.int32))
    bad = selection_arrays(4, 0)
    bad["true_slot"][0] = N_MEM
    with pytest.raises(DataFormatError, match="true_slot"):
        SelectionExamples(bad)
    with pytest.raises(DataFormatError, match="missing"):
        SelectionExamples({"context": bad["context"]})


# ---- early stopping ---------------------------------------------------------------------------------
def test_early_stopping_stops_at_the_right_epoch() -> None:
    # v1's memory_norm curve shape: best at epoch 7, patience 5 -> stop after epoch 12
    curve = [6.1, 5.5, 5.2, 4.9, 4.78, 4.69, 4.658, 4.666, 4.70, 4.72, 4.75, 4.80, 4.9]
    stopper = EarlyStopping(patience=5)
    stopped_at = None
    for epoch, value in enumerate(curve, start=1):
        stopper.step(epoch, value)
        if stopper.should_stop:
            stopped_at = epoch
            break
    assert stopped_at == 12 and stopper.best_epoch == 7 and stopper.best == 4.658


def test_early_stopping_resets_on_improvement_and_round_trips() -> None:
    stopper = EarlyStopping(patience=2)
    for epoch, value in enumerate([3.0, 3.1, 2.9, 3.0], start=1):
        assert stopper.step(epoch, value) == (value == 2.9 or epoch == 1)
    assert not stopper.should_stop
    clone = EarlyStopping(patience=2)
    clone.load_state_dict(stopper.state_dict())
    assert clone.step(5, 3.0) is False and clone.should_stop and clone.best_epoch == 3
    never = EarlyStopping(patience=0)
    for epoch in range(1, 20):
        never.step(epoch, float(epoch))
    assert not never.should_stop


# ---- checkpoints -------------------------------------------------------------------------------------
def test_rng_states_round_trip() -> None:
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    state = capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]


def test_checkpoint_keeps_previous_and_loads_weights_only(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assert store.load_latest() is None
    store.save({"step": 1, "w": torch.ones(3), "rng": capture_rng()})
    store.save({"step": 2, "w": torch.full((3,), 2.0), "rng": capture_rng()})
    payload, path = store.load_latest()
    assert path == store.last and payload["step"] == 2 and store.prev.exists()
    torch.load(store.last, weights_only=True)  # plain tensors and python values only


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_checkpoint_falls_back_to_previous(tmp_path: Path, damage: str) -> None:
    store = CheckpointStore(tmp_path)
    store.save({"step": 1, "w": torch.arange(1000.0)})
    store.save({"step": 2, "w": torch.arange(1000.0) * 2})
    raw = bytearray(store.last.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":
        at = raw.find((torch.tensor([500.0]) * 2).numpy().tobytes())
        raw[at] ^= 0xFF  # a weight changes value; the file still unpickles
    else:
        raw = bytearray(b"not a checkpoint")
    store.last.write_bytes(bytes(raw))
    with pytest.warns(CorruptCheckpointWarning, match="corrupt"):
        payload, path = store.load_latest()
    assert path == store.prev and payload["step"] == 1
    assert (tmp_path / "last.pt.corrupt").exists()
    store.save({"step": 3})  # the good prev.pt is not overwritten by the corrupt file
    assert torch.load(store.prev, weights_only=True)["payload"]["step"] == 1


# ---- base init ---------------------------------------------------------------------------------------
def test_variant_starts_from_base_weights() -> None:
    torch.manual_seed(0)
    base_cfg = tiny_config().replace(memory_layer=None)
    base = TransformerLM(base_cfg)
    torch.manual_seed(1)
    model = TransformerLM(tiny_config("learned"))
    report = init_from_base(model, base.state_dict(), base_cfg)
    sd, bsd = model.state_dict(), base.state_dict()
    assert torch.equal(sd["embed_in.weight"], bsd["embed_in.weight"])
    for name in ("layers.1.attention.query_key_value.weight", "layers.0.mlp.dense_h_to_4h.weight"):
        assert torch.equal(sd[name], bsd[name])
    H, d, D = base_cfg.heads, base_cfg.head_dim, base_cfg.hidden
    qkv = bsd["layers.0.attention.query_key_value.weight"].view(H, 3 * d, D)
    assert torch.equal(sd["layers.0.attention.k_proj.weight"].view(H, d, D), qkv[:, d : 2 * d])
    assert torch.equal(sd["layers.0.attention.o_proj.weight"], bsd["layers.0.attention.dense.weight"])
    assert set(report.kept) == {"layers.0.attention.gate", "layers.0.attention.landmark.proj.weight"}
    assert len(report.from_attention) == 4
    # the memory layer's q, k, v equal the base layer's (pre-rotary) projections without bias
    x = torch.randn(1, 5, D)
    fused = torch.nn.functional.linear(x, bsd["layers.0.attention.query_key_value.weight"]).view(1, 5, H, 3 * d)
    q_base = fused[..., :d].transpose(1, 2)
    q_mem, _, _ = model.layers[0].attention.qkv(x)
    assert torch.allclose(q_base, q_mem, atol=1e-6)
    with pytest.raises(BaseMismatchError, match="hidden"):
        init_from_base(model, bsd, base_cfg.replace(hidden=64, heads=2))


# ---- protocols and the loop ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "protocol,landmark",
    [("lm", lm) for lm in LANDMARKS + ["uniform", "none"]]
    + [("selection", lm) for lm in LANDMARKS + ["oracle", "uniform", "none"]],
)
def test_each_protocol_and_variant_lowers_training_loss(tmp_path: Path, protocol: str, landmark: str) -> None:
    summary = _trainer(tmp_path, protocol, landmark).fit()
    losses = [h["train/loss"] for h in summary["history"]]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.1, losses
    assert summary["best_epoch"] >= 1 and (tmp_path / "best.safetensors").exists()
    h = summary["history"][-1]
    assert 0.0 < h["memory/gate"] < 1.0
    if protocol == "selection" and landmark != "none" or landmark in LANDMARKS:
        assert 1.0 / N_MEM - 1e-6 <= h["train/memory/mix_max"] <= 1.0 + 1e-6
    if protocol == "selection":
        assert 0.0 <= h["val/memory/top_true"] <= 1.0


def test_oracle_selects_the_true_slot(tmp_path: Path) -> None:
    h = _trainer(tmp_path, "selection", "oracle", epochs=1).fit()["history"][0]
    assert h["train/memory/top_true"] == 1.0 and h["train/memory/mix_max"] == 1.0


def test_lm_protocol_carries_the_bank_and_v1_validation_reads_it_empty(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "lm", "memory_norm", epochs=1)
    protocol = trainer.protocol
    batch = trainer.train_data.batch(np.arange(8))
    protocol.start_epoch()
    protocol.step(batch, training=True)
    protocol.step(batch, training=True)
    bank = protocol.bank
    assert bank.pointer == 2 and (bank.tokens[:2] > 0).all() and (bank.tokens[2:] == 0).all()
    assert not bank.M.requires_grad
    trainer.validate()  # eval_memory off: reset, no writes
    assert protocol.bank.pointer == 0 and (protocol.bank.tokens == 0).all()
    protocol.eval_memory = "on"
    trainer.validate()  # 8 val chunks = one batch -> one write
    assert protocol.bank.pointer == 1


def test_max_steps_per_epoch_caps_the_epoch(tmp_path: Path) -> None:
    summary = _trainer(tmp_path, "selection", "learned", epochs=2, max_steps_per_epoch=2).fit()
    assert [h["steps"] for h in summary["history"]] == [2, 4]


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "selection", "learned", epochs=2, checkpoint_every=2)
    with torch.no_grad():
        trainer.model.embed_out.weight[3, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"training loss .* epoch 1, step 1 .* none written yet"):
        trainer.fit()


def test_non_finite_gradient_names_the_parameter(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "selection", "learned", epochs=2, checkpoint_every=2)
    steps = {"n": 0}

    def poison(grad: torch.Tensor) -> torch.Tensor:
        steps["n"] += 1
        return grad * float("inf") if steps["n"] == 3 else grad

    trainer.model.layers[1].mlp.dense_4h_to_h.weight.register_hook(poison)
    with pytest.raises(NonFiniteError) as err:
        trainer.fit()
    msg = str(err.value)
    assert "layers.1.mlp.dense_4h_to_h.weight" in msg and "step 3" in msg
    assert str(tmp_path / "checkpoints" / "last.pt") in msg


def test_training_is_deterministic(tmp_path: Path) -> None:
    a = _trainer(tmp_path / "a", "selection", "hsa_encoder", epochs=2).fit()
    b = _trainer(tmp_path / "b", "selection", "hsa_encoder", epochs=2).fit()
    assert a["history"] == b["history"]
    ta = torch.load(tmp_path / "a/checkpoints/last.pt", weights_only=True)["payload"]["model"]
    tb = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)["payload"]["model"]
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_in_process_resume_matches_uninterrupted(tmp_path: Path) -> None:
    full = _trainer(tmp_path / "full", "lm", "learned", epochs=3).fit()
    part = _trainer(tmp_path / "part", "lm", "learned", epochs=3)
    # stop after the mid-epoch checkpoint at global step 3 (epoch 1 of 4 steps), then resume in a new Trainer
    original = part._save_checkpoint

    def stop_after_first(started: float) -> None:
        original(started)
        raise KeyboardInterrupt

    part._save_checkpoint = stop_after_first
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    assert torch.load(tmp_path / "part/checkpoints/last.pt", weights_only=True)["payload"]["step"] == 3
    resumed = _trainer(tmp_path / "part", "lm", "learned", epochs=3)
    with torch.no_grad():  # a different starting point: the checkpoint must overwrite everything
        for p in resumed.model.parameters():
            p.add_(1.0)
    again = resumed.fit()
    assert again["history"] == full["history"]
