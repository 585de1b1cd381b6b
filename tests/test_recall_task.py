"""The recall task (slot-MQAR, data/recall.py): invariants of the generator, its chance level, a memory
that provably answers it, and the protocol's scoring of the value tokens only."""

from __future__ import annotations

import math

import dataclasses

import numpy as np
import pytest
import torch

from multimem.data.errors import DataError
from multimem.data.recall import START, RecallSpec, check_buildable, recall_examples
from multimem.model import MemoryConfig, ModelConfig, TransformerLM
from multimem.training.batches import SelectionExamples
from multimem.training.protocols import SelectionProtocol


def spec(keys: str = "per_slot", **kw) -> RecallSpec:
    args = dict(num_memories=6, pairs=4, keys=keys, num_keys=96, num_values=16, num_domains=8)
    args.update(kw)
    return RecallSpec(**args)


@pytest.mark.parametrize("keys", ["per_slot", "shared_cue"])
def test_queried_keys_occur_once_in_the_true_slot_and_in_no_other(keys):
    s = spec(keys)
    ex = recall_examples(s, 300, np.random.default_rng(0))
    ctx, tgt, mask, true = ex["context"], ex["target"], ex["target_mask"], ex["true_slot"]
    assert ctx.shape == (300, s.num_memories, s.segment_len) and tgt.shape == (300, s.target_len + 1)
    for e in range(300):
        asked = tgt[e, 1 + s.cue::2]  # the keys asked, [P]
        assert len(asked) == s.pairs and len(set(asked.tolist())) == s.pairs
        for k in asked.tolist():
            where = np.argwhere(ctx[e] == k)  # [(slot, pos)]
            assert len(where) == 1 and where[0, 0] == true[e]
            # the answer scored after key k is the value stored right after k in the true slot
            pos_t = int(np.flatnonzero(tgt[e] == k)[0])
            assert tgt[e, pos_t + 1] == ctx[e, true[e], where[0, 1] + 1]


@pytest.mark.parametrize("keys", ["per_slot", "shared_cue"])
def test_the_answer_is_never_in_the_targets_own_context_before_its_query(keys):
    s = spec(keys)
    ex = recall_examples(s, 300, np.random.default_rng(1))
    tgt, mask = ex["target"], ex["target_mask"]
    labels = tgt[:, 1:]
    for e in range(300):
        scored = np.flatnonzero(mask[e])
        assert len(scored) == s.pairs and (labels[e, scored] >= s.value_base).all()
        assert not mask[e][labels[e] < s.value_base].any()  # only values are scored
        for t in scored:  # label t (a value) answers the key that is the input at position t
            key = tgt[e, t]
            assert s.key_base <= key < s.value_base
            # the key is asked once, so no earlier (key, value) pair in the target gives the answer away
            assert int((tgt[e, : t + 1] == key).sum()) == 1
            assert int((tgt[e] == key).sum()) == 1


def test_per_slot_keys_route_by_content_and_shared_cue_keys_do_not():
    s = spec("per_slot")
    ex = recall_examples(s, 200, np.random.default_rng(2))
    per = s.num_keys // s.num_domains
    keys = ex["context"][:, :, 0::2]  # [E, N, P]
    domain_of_key = (keys - s.key_base) // per
    assert (domain_of_key == ex["slot_domain"][:, :, None]).all()
    c = spec("shared_cue")
    ex = recall_examples(c, 200, np.random.default_rng(2))
    assert (ex["context"][:, :, 0] == START + 1 + ex["slot_domain"]).all()  # the cue token
    assert (ex["target"][:, 1] == START + 1 + ex["slot_domain"][np.arange(200), ex["true_slot"]]).all()
    # the same key can belong to different domains in different examples
    keys = ex["context"][:, :, 1::2].reshape(200, -1)
    doms = np.repeat(ex["slot_domain"], c.pairs, axis=1)
    first = {}
    mixed = False
    for k, d in zip(keys.ravel().tolist(), doms.ravel().tolist()):
        mixed |= first.setdefault(k, d) != d
    assert mixed


def test_chance_level_is_one_over_the_values_and_a_guesser_scores_it():
    s = spec(num_values=16)
    assert s.chance_accuracy == 1 / 16 and math.isclose(s.chance_loss, math.log(16))
    ex = recall_examples(s, 4000, np.random.default_rng(3))
    labels = ex["target"][:, 1:][ex["target_mask"]]
    guess = np.random.default_rng(4).integers(s.value_base, s.value_base + s.num_values, size=labels.shape)
    assert abs((guess == labels).mean() - s.chance_accuracy) < 0.01  # 16,000 values
    # the values are uniform, so no constant prediction beats chance by more than noise
    counts = np.bincount(labels - s.value_base, minlength=s.num_values)
    assert counts.max() / counts.sum() < 1 / 16 + 0.01


def test_examples_are_a_pure_function_of_the_seed():
    a = recall_examples(spec(), 50, np.random.default_rng(7))
    b = recall_examples(spec(), 50, np.random.default_rng(7))
    c = recall_examples(spec(), 50, np.random.default_rng(8))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["target"], c["target"])


def test_impossible_sizes_are_refused_naming_the_parameter():
    with pytest.raises(DataError, match="memories.recall.num_keys"):
        check_buildable(spec(num_keys=8), vocab_size=4096)
    with pytest.raises(DataError, match="model.vocab_size"):
        check_buildable(spec(), vocab_size=64)
    with pytest.raises(DataError, match="memories.recall.num_domains"):
        check_buildable(spec(num_domains=3), vocab_size=4096)


def test_a_hand_written_memory_retrieves_the_stored_value():
    """M = Σ φ(k) vᵀ with one-hot keys and values, read by Infini-attention eq. 3, returns the value
    stored under the queried key, for every key of every slot: the task is answerable from memory."""
    s = spec("per_slot", num_memories=4, num_domains=4, num_keys=64, num_values=16)
    ex = recall_examples(s, 20, np.random.default_rng(5))
    V = s.vocab_needed
    eye = torch.eye(V, dtype=torch.float64)
    for e in range(20):
        M = torch.zeros(s.num_memories, V, V, dtype=torch.float64)  # [N, d=V keys, e=V values]
        for n in range(s.num_memories):
            seg = torch.as_tensor(ex["context"][e, n].astype(np.int64))
            k, v = eye[seg[0::2]], eye[seg[1::2]]  # [P, V]
            M[n] += k.T @ v  # Σ_p k_p v_pᵀ
        true = int(ex["true_slot"][e])
        tgt = ex["target"][e]
        for t in np.flatnonzero(ex["target_mask"][e]):
            q = eye[int(tgt[t])]  # the key asked at input position t
            read = q @ M[true]  # [V]
            assert int(read.argmax()) == int(tgt[t + 1])
            assert float(read.sum()) == 1.0  # the key is in the slot exactly once


def tiny_model(landmark: str = "oracle", vocab: int = 160) -> TransformerLM:
    mem = MemoryConfig(num_memories=4, landmark=landmark, state="per_example", readout_norm="exact",
                       relevance="per_token", empty="masked", assignment="explicit", landmark_norm="mean")
    return TransformerLM(ModelConfig(vocab_size=vocab, hidden=32, layers=2, heads=2, ffn=64,
                                     layernorm="separate", memory_layer=1, memory=mem))


def test_protocol_scores_only_the_value_tokens_and_counts_value_accuracy():
    s = spec(num_memories=4, num_domains=4, num_keys=32, num_values=16)
    ex = SelectionExamples(recall_examples(s, 8, np.random.default_rng(6)))
    model = tiny_model(vocab=s.vocab_needed).eval()
    proto = SelectionProtocol(model, "differentiable")
    batch = ex.batch(np.arange(8))
    with torch.no_grad():
        res = proto.step(batch, training=False)
    assert res.tokens == 8 * s.pairs  # only the values
    # the loss sum equals the cross-entropy of the value positions computed by hand
    bank = model.new_bank(8)
    model.write_memories(batch["context"], bank)
    with torch.no_grad():
        logits = model(batch["target"][:, :-1], bank=bank, oracle_slot=batch["true_slot"]).logits
    labels, mask = batch["target"][:, 1:], batch["target_mask"]
    ce = torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum")
    assert torch.allclose(res.loss_sum, ce, atol=1e-4)
    hits = float((logits[mask].argmax(-1) == labels[mask]).sum())
    assert res.stats["acc"] == (hits, float(8 * s.pairs))


def test_v1_validation_without_memory_and_a_batch_shared_bank_on_the_recall_task():
    """eval_memory 'off' (v1) validates from an empty bank: the context cannot matter, so the oracle reads
    the same as no memory; state 'shared' (v1) gives the batch one bank, so an example's answer depends on
    the other examples of its batch. Training (eval_memory has no say there) still writes."""
    from multimem.evaluation.perplexity import selection_perplexity

    s = spec(num_memories=4, num_domains=4, num_keys=32, num_values=16)
    ex = SelectionExamples(recall_examples(s, 8, np.random.default_rng(7)))
    torch.manual_seed(0)
    model = tiny_model(vocab=s.vocab_needed).eval()
    batch = ex.batch(np.arange(8))
    with torch.no_grad():
        on = SelectionProtocol(model, "detached", "on").step(batch, training=False)
        off = SelectionProtocol(model, "detached", "off").step(batch, training=False)
        trained_off = SelectionProtocol(model, "detached", "off").step(batch, training=True)
        empty = model(batch["target"][:, :-1], bank=model.new_bank(8), oracle_slot=batch["true_slot"])
    labels = batch["target"][:, 1:].masked_fill(~batch["target_mask"], -100)
    ce_empty = torch.nn.functional.cross_entropy(empty.logits.transpose(1, 2), labels, reduction="sum")
    assert torch.allclose(off.loss_sum, ce_empty, atol=1e-4)
    assert not torch.allclose(on.loss_sum, off.loss_sum, atol=1e-3)
    assert torch.allclose(trained_off.loss_sum, on.loss_sum, atol=1e-4)
    res = selection_perplexity(model, ex, 8, ["oracle", "none"], torch.device("cpu"), eval_memory="off")
    assert res["oracle"].loss == pytest.approx(res["none"].loss, abs=1e-6)

    shared = TransformerLM(dataclasses.replace(model.cfg, memory=dataclasses.replace(model.cfg.memory,
                                                                                      state="shared")))
    shared.load_state_dict(model.state_dict())
    shared.eval()
    proto = SelectionProtocol(shared, "detached", "on")
    with torch.no_grad():
        alone = proto.step(ex.batch(np.arange(1)), training=False).loss_sum
        in_batch = proto.step(ex.batch(np.arange(8)), training=False)
        per_ex = SelectionProtocol(model, "detached", "on").step(ex.batch(np.arange(1)), training=False).loss_sum
    assert torch.allclose(alone, per_ex, atol=1e-4)  # a batch of one: the shared bank is that example's
    first = selection_perplexity(shared, ex, 8, ["oracle"], torch.device("cpu"))["oracle"].examples["loss"][0]
    assert abs(first * s.pairs - float(alone)) > 1e-3  # with 7 other examples in its bank it reads differently
