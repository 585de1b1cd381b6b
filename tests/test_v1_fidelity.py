"""v1 exactly as the note ran it (issue 13): one test per difference the v1 presets used to have.

1 write rule      v1 ran the delta rule; the project's v1 mode equals the v1 reference with delta writes
                  once a slot is written twice (float64), and the v1 presets write delta.
2 loss reduction  v1 backpropagated the summed cross-entropy; with train.loss_reduction sum the project's
                  Trainer follows a hand-written v1 loop (reference layer, torch AdamW lr 1e-4) to float64
                  round-off, weights and AdamW state; with mean it does not.
3 empty memory    on the first batch of an epoch (every memory empty) v1's learned landmark had no gradient
                  (None): AdamW skipped it, no weight decay, no step count. Checked across an epoch boundary.
4 inputs          v1 fed 256-token inputs: data.lm_input_len chunk_len stores chunk_len + 1 tokens per chunk.
5 precision       train.precision float32: no autocast, no TF32 (v1 ran float32).
6 side experiment the memory builder pads builder_text_tokens of text with EOS to builder_tokens and writes
                  the domains named by memories.builder_domains.

The original v1 code is not in this repository; the reference is `multimem.model.reference_v1` (v1's
computation written out as seed-v1.md §2 states it) and the hand-written loop below (v1's training loop).
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from multimem.data import DataError, Documents, build_memories, prepare
from multimem.data.tasks import builder_domain_ids, builder_text
from multimem.model.config import MemoryConfig, ModelConfig
from multimem.model.reference_v1 import check_v1, new_v1_memories, use_reference_layer
from multimem.model.transformer import TransformerLM
from multimem.params import ParamsError, load_params, validate_params
from multimem.training.batches import LMChunks, batch_rows, epoch_order, steps_per_epoch
from multimem.training.device import autocast, configure_backend
from multimem.training.loop import LoopConfig, RunPaths, Trainer
from multimem.training.protocols import LMProtocol

ROOT = Path(__file__).resolve().parents[1]
V1_PRESETS = ["landmark_v1", "landmark_v1-demo"]
SMALL = dict(vocab_size=53, hidden=32, layers=2, heads=4, ffn=64)
N = 3  # memories: 5 batches an epoch rewrite slots 0 and 1


def _v1_preset(name: str) -> dict:
    return load_params(ROOT / "experiments" / f"{name}.yaml")


def _model(landmark: str, write: str = "delta", dtype=torch.float64, **mem) -> TransformerLM:
    torch.manual_seed(3)
    cfg = ModelConfig(**SMALL, memory=MemoryConfig(num_memories=N, landmark=landmark, write=write, **mem))
    model = TransformerLM(cfg).to(dtype)
    with torch.no_grad():  # a gate away from 0.5 so the memory readout matters
        model.memory_layer.attention.gate.copy_(torch.linspace(-1, 1, SMALL["heads"]))
    return model


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---- 1. write rule ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", V1_PRESETS)
def test_write_rule_v1_presets_write_delta(name):
    p = _v1_preset(name)
    assert p["model"]["memory"]["write"] == "delta"
    for landmark in p["train"]["variants"]:  # the v1 reference computes exactly these configurations
        check_v1(ModelConfig.from_params(p["model"], landmark=landmark))


@pytest.mark.parametrize("landmark", ["memory_norm", "learned"])
def test_write_rule_delta_matches_reference_once_a_slot_is_written_twice(landmark):
    model = _model(landmark, "delta")
    ref = use_reference_layer(copy.deepcopy(model))
    simple = _model(landmark, "simple")  # same weights, v1's write rule switched off
    bank, mem, sbank = model.new_bank(None), new_v1_memories(ref), simple.new_bank(None)
    g = torch.Generator().manual_seed(0)
    worst, writes = 0.0, [0] * N
    for step in range(8):  # 8 batches, 3 slots: every slot written 2-3 times
        ids = torch.randint(0, SMALL["vocab_size"], (4, 16), generator=g)
        slot = bank.pointer
        out = model(ids, bank=bank, update_memory=True)
        want = ref(ids, bank=mem, update_memory=True)
        simple(ids, bank=sbank, update_memory=True)
        writes[slot] += 1
        worst = max(worst, _max_diff(out.logits, want.logits), _max_diff(bank.M, torch.stack(mem.M)),
                    _max_diff(bank.z, torch.stack(mem.z)), _max_diff(out.mix_weights, want.mix_weights))
        # the simple rule writes the same thing into an empty slot and something else into a written one
        gap = _max_diff(sbank.M[slot], bank.M[slot]) / bank.M[slot].abs().max().item()
        if writes[slot] == 1:
            assert gap < 1e-12, f"step {step}: first write to slot {slot} differs between the rules"
        else:
            assert gap > 1e-4, f"step {step}: rewrite of slot {slot} does not tell delta from simple ({gap})"
    assert min(writes) >= 2
    print(f"\n[{landmark}] v1 mode vs reference, delta writes, 8 batches: max abs diff {worst:.3g}")
    assert worst < 1e-12, f"project v1 mode vs reference with delta writes: max abs diff {worst:.3g}"


# ---- 2./3. loss reduction and the empty-memory landmark, through the real Trainer ---------------------------

ROWS, WIDTH, BATCH, EPOCHS, SEED, LR, WD = 20, 17, 4, 2, 7, 1e-4, 0.01


def _chunks() -> np.ndarray:
    return np.random.default_rng(1).integers(0, SMALL["vocab_size"], (ROWS, WIDTH)).astype(np.int32)


def _v1_loop(model0: TransformerLM, chunks: np.ndarray) -> tuple[TransformerLM, torch.optim.AdamW]:
    """v1's training loop, written out: the v1 reference layer, AdamW(lr) with torch's defaults (weight decay
    0.01), memory reset at each epoch's start, logits of every token, cross-entropy reduction="sum"."""
    ref = use_reference_layer(copy.deepcopy(model0))
    opt = torch.optim.AdamW(ref.parameters(), lr=LR)
    steps = steps_per_epoch(ROWS, BATCH)
    for epoch in range(EPOCHS):
        mem = new_v1_memories(ref)  # model.reset_memory()
        order = epoch_order(ROWS, SEED, epoch)  # the project's batch order: data plumbing, not under test
        for step in range(steps):
            batch = torch.from_numpy(chunks[batch_rows(order, step, BATCH)].astype(np.int64))
            input_ids, labels = batch[:, :-1], batch[:, 1:]
            opt.zero_grad()
            logits = ref(input_ids, bank=mem, update_memory=True).logits
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.reshape(-1), reduction="sum")
            loss.backward()
            opt.step()
    return ref, opt


def _project(model0: TransformerLM, chunks: np.ndarray, reduction: str, out: Path) -> Trainer:
    model = copy.deepcopy(model0)
    cfg = LoopConfig(epochs=EPOCHS, batch_size=BATCH, lr=LR, weight_decay=WD, grad_clip=0.0, patience=0,
                     seed=SEED, checkpoint_every=10_000, loss_reduction=reduction, precision="float32")
    data = LMChunks(chunks)
    trainer = Trainer(model, LMProtocol(model, "off"), data, LMChunks(chunks[:BATCH]), cfg, RunPaths.under(out))
    trainer.fit()
    return trainer


def _compare(trainer: Trainer, ref: TransformerLM, opt: torch.optim.AdamW) -> dict[str, float]:
    """Max abs difference of the weights and of AdamW's moments; AdamW step counts must be equal."""
    out = {"weights": 0.0, "exp_avg": 0.0, "exp_avg_sq": 0.0}
    ref_params = dict(ref.named_parameters())
    for name, p in trainer.named_params:
        q = ref_params[name]
        out["weights"] = max(out["weights"], _max_diff(p, q))
        s, t = trainer.optimizer.state[p], opt.state[q]
        assert float(s["step"]) == float(t["step"]), f"{name}: AdamW step {float(s['step'])} vs v1 {float(t['step'])}"
        for k in ("exp_avg", "exp_avg_sq"):
            out[k] = max(out[k], _max_diff(s[k], t[k]))
    return out


@pytest.fixture(scope="module", params=["memory_norm", "learned"])
def runs(request, tmp_path_factory):
    torch.use_deterministic_algorithms(True)
    model0, chunks = _model(request.param), _chunks()
    ref, opt = _v1_loop(model0, chunks)
    tmp = tmp_path_factory.mktemp(f"v1_{request.param}")
    return {"landmark": request.param, "v1": (ref, opt),
            "sum": _project(model0, chunks, "sum", tmp / "sum"), "mean": _project(model0, chunks, "mean", tmp / "mean")}


def test_loss_reduction_sum_matches_the_v1_loop_in_float64(runs):
    trainer = runs["sum"]
    assert trainer.global_step == EPOCHS * steps_per_epoch(ROWS, BATCH) == 10
    diff = _compare(trainer, *runs["v1"])
    print(f"\n[{runs['landmark']}] loss_reduction sum vs v1 loop after {trainer.global_step} AdamW steps: {diff}")
    assert diff["weights"] < 1e-12 and diff["exp_avg"] < 1e-9 and diff["exp_avg_sq"] < 1e-9, diff
    assert diff["weights"] < LR * 1e-6  # round-off, far below one AdamW step


def test_loss_reduction_mean_differs_from_the_v1_loop(runs):
    ref = dict(runs["v1"][0].named_parameters())
    diff = max(_max_diff(p, ref[n]) for n, p in runs["mean"].named_params)
    print(f"\n[{runs['landmark']}] loss_reduction mean vs v1 loop: max abs weight difference {diff:.3g}")
    assert diff > 1e-6  # AdamW's epsilon is relatively 8x larger against a mean's gradient than a sum's


def test_empty_memory_learned_landmark_is_skipped_by_adamw_across_epochs(runs):
    if runs["landmark"] != "learned":
        pytest.skip("memory_norm has no landmark parameters")
    trainer, (ref, opt) = runs["sum"], runs["v1"]
    proj = trainer.model.memory_layer.attention.landmark.proj.weight
    steps = trainer.global_step
    # the first batch of each epoch reads an empty bank: no gradient, no AdamW step, no weight decay
    assert float(trainer.optimizer.state[proj]["step"]) == steps - EPOCHS
    assert float(trainer.optimizer.state[trainer.model.embed_in.weight]["step"]) == steps
    ref_proj = ref.memory_layer.attention.landmark.proj.weight
    assert float(opt.state[ref_proj]["step"]) == steps - EPOCHS
    d = _max_diff(proj, ref_proj)
    print(f"\n[learned] landmark projection vs v1 after {EPOCHS} epochs: max abs diff {d:.3g}")
    assert d < 1e-12


@pytest.mark.parametrize("empty, none", [("zero_score", True), ("masked", False)])
def test_empty_memory_learned_landmark_gets_no_gradient_in_v1_mode(empty, none):
    model = _model("learned", empty=empty)
    bank = model.new_bank(None)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 9))
    model(ids, bank=bank, update_memory=True).logits.square().sum().backward()  # every memory empty at the read
    proj = model.memory_layer.attention.landmark.proj.weight
    assert (proj.grad is None) == none  # v1 (zero_score): None; masked: computed, masked to zeros
    assert model.memory_layer.attention.q_proj.weight.grad is not None
    with torch.no_grad():
        model(ids, bank=bank, update_memory=True)  # slots 0 and 1 written
    model.zero_grad(set_to_none=True)
    model(ids, bank=bank).logits.square().sum().backward()  # the landmark takes part
    assert proj.grad is not None
    if none:  # (masked: the summed-z scores saturate the softmax over two slots, the gradient underflows to 0)
        assert proj.grad.abs().sum() > 0


# ---- 4. 256-token inputs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v1_demo_small():
    p = copy.deepcopy(_v1_preset("landmark_v1-demo"))
    p["data"].update(max_documents=300, vocab_size=512, chunk_len=32, max_chunks=0)
    return p


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, v1_demo_small):
    tmp = tmp_path_factory.mktemp("prepared")
    out = {}
    for mode in ("chunk_len", "chunk_len_minus_1"):
        out[mode] = prepare({**v1_demo_small["data"], "lm_input_len": mode}, tmp / mode)
    return tmp, out


@pytest.mark.parametrize("mode, inputs", [("chunk_len", 32), ("chunk_len_minus_1", 31)])
def test_inputs_v1_chunking_feeds_chunk_len_tokens(prepared, mode, inputs):
    tmp, manifests = prepared
    assert manifests[mode]["chunk_tokens"] == inputs + 1
    chunks = np.load(tmp / mode / "lm_train.npy")
    assert chunks.shape[1] == inputs + 1
    # v1: consecutive, non-overlapping pieces of chunk_len + 1 tokens of the stream (documents joined, no EOS)
    stream = Documents.load(tmp / mode / "documents.npz").tokens
    n = len(stream) // chunks.shape[1]
    pieces = {tuple(r) for r in stream[: n * chunks.shape[1]].reshape(n, -1).tolist()}
    assert all(tuple(r) in pieces for r in chunks.tolist())
    # the LM protocol feeds chunk[:-1] and scores chunk[1:]
    model = TransformerLM(ModelConfig(vocab_size=512, hidden=32, layers=2, heads=4, ffn=64))
    seen = []
    model.memory_layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    result = LMProtocol(model).step(LMChunks(chunks).batch(np.arange(3)), training=True)
    assert seen == [inputs] and result.tokens == 3 * inputs


def test_inputs_v1_presets_feed_chunk_len_tokens():
    p = _v1_preset("landmark_v1")
    assert (p["data"]["lm_input_len"], p["data"]["chunk_len"], p["data"]["max_chunks"]) == ("chunk_len", 256, 5000)
    assert _v1_preset("landmark_v1-demo")["data"]["lm_input_len"] == "chunk_len"


# ---- 5. precision ---------------------------------------------------------------------------------------------


def test_precision_float32_takes_no_autocast_path():
    cuda = torch.device("cuda")  # a device object only: nothing here runs on a GPU
    assert isinstance(autocast(cuda, "float32"), contextlib.nullcontext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" on a CPU-only machine
        amp = autocast(cuda, "bf16")
    assert isinstance(amp, torch.autocast) and amp.fast_dtype == torch.bfloat16
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        configure_backend(cuda, 0, "bf16")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        configure_backend(cuda, 0, "float32")
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_precision_float32_trainer_step_runs_without_autocast(tmp_path):
    model = _model("learned", dtype=torch.float32)
    seen = []
    model.memory_layer.register_forward_pre_hook(lambda m, args: seen.append(
        (torch.is_autocast_enabled("cpu"), torch.is_autocast_enabled("cuda"), args[0].dtype)))
    cfg = LoopConfig(epochs=1, batch_size=BATCH, lr=LR, weight_decay=WD, grad_clip=0.0, patience=0, seed=0,
                     max_steps_per_epoch=1, loss_reduction="sum", precision="float32")
    Trainer(model, LMProtocol(model), LMChunks(_chunks()), LMChunks(_chunks()[:BATCH]), cfg,
            RunPaths.under(tmp_path)).fit()
    assert seen and all(s == (False, False, torch.float32) for s in seen)


@pytest.mark.parametrize("name", V1_PRESETS)
def test_precision_and_loss_reduction_of_the_v1_presets(name):
    t = _v1_preset(name)["train"]
    assert (t["precision"], t["loss_reduction"]) == ("float32", "sum")


@pytest.mark.parametrize("path, value, allowed", [
    ("train.precision", "fp16", "float32, bf16"),
    ("train.loss_reduction", "avg", "sum, mean"),
    ("data.lm_input_len", 256, "chunk_len_minus_1, chunk_len"),
    ("memories.builder_padding", "pad", "none, pad_to_builder_tokens"),
])
def test_new_keys_are_validated_naming_key_and_allowed_values(path, value, allowed):
    p = copy.deepcopy(_v1_preset("landmark_v1-demo"))
    section, key = path.split(".")
    p[section][key] = value
    with pytest.raises(ParamsError) as e:
        validate_params(p)
    assert path in str(e.value) and allowed in str(e.value)


def test_loop_config_rejects_unknown_reduction_and_precision():
    base = dict(epochs=1, batch_size=1, lr=1e-3, weight_decay=0.0, grad_clip=0.0, patience=0, seed=0)
    with pytest.raises(ParamsError, match=r"train.loss_reduction: 'avg' .*allowed: sum, mean"):
        LoopConfig(**base, loss_reduction="avg")
    with pytest.raises(ParamsError, match=r"train.precision: 'fp16' .*allowed: float32, bf16"):
        LoopConfig(**base, precision="fp16")


# ---- 6. the memory-builder side experiment ---------------------------------------------------------------------


def _docs() -> Documents:
    tokens = np.arange(1, 31, dtype=np.int32)  # three documents of 10 tokens, ids 1..30 (0 is EOS)
    return Documents(tokens, np.array([0, 10, 20, 30]), np.array([0, 0, 1], dtype=np.int16),
                     np.zeros(3, dtype=np.int8))


def test_side_experiment_padding_pads_builder_text_with_eos():
    docs = _docs()
    full = builder_text(docs, 0, 12, 0, np.random.default_rng(0))
    assert (full != 0).sum() == 11 and list(full).count(0) == 1  # 12 tokens of text, one EOS between documents
    padded = builder_text(docs, 0, 12, 0, np.random.default_rng(0), text_tokens=5)
    assert padded.shape == (12,) and (padded[:5] == full[:5]).all() and (padded[5:] == 0).all()
    with pytest.raises(DataError, match="memories.builder_text_tokens=13"):
        builder_text(docs, 0, 12, 0, np.random.default_rng(0), text_tokens=13)
    with pytest.raises(DataError, match="memories.builder_text_tokens=12, but domain id 1 has only 11"):
        builder_text(docs, 1, 12, 0, np.random.default_rng(0), text_tokens=12)
    with pytest.raises(DataError, match="memories.builder_tokens=12, but domain id 1 has only 11"):
        builder_text(docs, 1, 12, 0, np.random.default_rng(0))


def test_side_experiment_domains_by_name_in_slot_order():
    names = ["Arts", "Geography", "History", "Technology"]
    assert builder_domain_ids([], names, np.array([3, 1, 0]), 2).tolist() == [3, 1]  # default: first usable
    assert builder_domain_ids(["Technology", "Arts"], names, np.arange(4), 2).tolist() == [3, 0]
    with pytest.raises(DataError, match="'Science' not a domain of the prepared corpus; allowed: Arts, Geography"):
        builder_domain_ids(["Science", "Arts"], names, np.arange(4), 2)
    with pytest.raises(DataError, match="exactly memories.num_memories"):
        builder_domain_ids(["Arts"], names, np.arange(4), 2)


def test_side_experiment_params_rules():
    p = copy.deepcopy(_v1_preset("landmark_v1-demo"))
    assert (p["memories"]["builder_padding"], p["memories"]["builder_text_tokens"], p["memories"]["builder_tokens"]) \
        == ("pad_to_builder_tokens", 128, 256)  # v1: ~80 words padded to 256 tokens, about half padding
    bad = copy.deepcopy(p)
    bad["memories"]["builder_domains"] = ["History"]
    with pytest.raises(ParamsError, match=r"memories.builder_domains: 1 names for 4 slots"):
        validate_params(bad)
    bad = copy.deepcopy(p)
    bad["memories"]["builder_text_tokens"] = 300
    with pytest.raises(ParamsError, match=r"memories.builder_text_tokens: 300 exceeds memories.builder_tokens"):
        validate_params(bad)


def test_side_experiment_v1_demo_domains_are_wiki_vital_topics():
    from multimem.data.sources import wiki_vital_documents

    topics = {t for t, _ in wiki_vital_documents([])}
    names = _v1_preset("landmark_v1-demo")["memories"]["builder_domains"]
    assert names == ["Physical sciences", "History", "Technology", "Geography"]  # science, history, ...
    assert set(names) <= topics


def test_side_experiment_build_memories_pads_and_uses_the_named_domains(prepared, v1_demo_small, tmp_path):
    tmp, manifests = prepared
    mem = dict(v1_demo_small["memories"], segment_len=16, target_len=16, examples_train=8, examples_val=4,
               examples_test=0, query_len=16)
    manifest = build_memories(mem, tmp / "chunk_len", tmp_path / "memories")
    assert manifest["memory_domains"] == mem["builder_domains"]
    eos = manifests["chunk_len"]["tokenizer"]["eos_id"]
    with np.load(tmp_path / "memories" / "builder.npz") as b:
        slots = b["slot_tokens"]
        domains = json.loads((tmp / "chunk_len" / "domains.json").read_text())
        assert [domains[d] for d in b["slot_domain"].tolist()] == mem["builder_domains"]
    assert slots.shape == (4, 256)
    assert (slots[:, 128:] == eos).all()  # about half padding, as in v1
    assert ((slots[:, :128] != eos).mean(axis=1) > 0.9).all()  # the first 128 tokens are text
