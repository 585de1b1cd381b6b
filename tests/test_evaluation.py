"""Evaluation metrics on planted cases, with real (tiny) models whose weights are set by hand:
a landmark made perfect scores 100% top-1, identical memories score exactly chance, the oracle mixer
beats uniform and none where memory decides the loss, and v1's lm path reads an empty bank."""

import numpy as np
import pytest
import torch

from multimem.model.config import LANDMARKS, MemoryConfig, ModelConfig
from multimem.evaluation.perplexity import lm_perplexity, selection_perplexity
from multimem.evaluation.selection import Builder, builder_bank, query_scores, selection_accuracy
from multimem.model.transformer import TransformerLM
from multimem.training.batches import LMChunks, SelectionExamples
from multimem.training.protocols import token_loss_sum

V2 = dict(state="per_example", readout_norm="exact", relevance="per_token", empty="masked",
          assignment="explicit", landmark_norm="mean", score_scale="sqrt_d", encoder_keys="all_writes",
          encoder_capacity=16, encoder_heads=2, encoder_ffn=16)
V1 = dict(state="shared", readout_norm="v1", relevance="sequence_mean", empty="zero_score",
          assignment="round_robin", landmark_norm="sum", score_scale="none", encoder_keys="last_write")
CPU = torch.device("cpu")
N, SET = 4, 4  # memories; tokens per domain: domain i owns tokens SET*i .. SET*i + SET-1
NAMES = ["Arts", "Everyday life", "History", "Physical sciences"]


def _model(landmark: str, v2: bool = True, layers: int = 1, hidden: int = 16, heads: int = 2) -> TransformerLM:
    cfg = ModelConfig(vocab_size=N * SET, hidden=hidden, layers=layers, heads=heads, ffn=32,
                      layernorm="separate" if v2 else "shared",
                      memory=MemoryConfig(num_memories=N, landmark=landmark, **(V2 if v2 else V1)))
    return TransformerLM(cfg).eval()


@torch.no_grad()
def _one_hot_model(landmark: str) -> TransformerLM:
    """One head; memory layer 0 sees one-hot token embeddings with identity q, k, v projections: a slot's mean
    key overlaps a query's keys exactly when they share tokens. The gate is ~1 (memory readout only),
    the MLP is off, and the LM head reads the memory readout back as token logits."""
    model = _model(landmark, heads=1)
    eye = torch.eye(N * SET)  # vocab = hidden = 16
    for p in model.parameters():
        p.zero_()
    model.embed_in.weight.copy_(eye)
    att = model.layers[0].attention
    for proj in (att.q_proj, att.k_proj, att.v_proj):
        proj.weight.copy_(eye)
    att.o_proj.weight.copy_(4 * eye)
    att.gate.fill_(10.0)
    for ln in (model.layers[0].input_layernorm, model.layers[0].post_attention_layernorm, model.final_layer_norm):
        ln.weight.fill_(1.0)
    model.embed_out.weight.copy_(eye)
    return model


def _domain_tokens(rng: np.random.Generator, domain: np.ndarray | int, length: int) -> np.ndarray:
    """Tokens of `domain` (any shape) -> shape + (length,), drawn from the domain's own token set."""
    d = np.asarray(domain)
    return (SET * d[..., None] + rng.integers(0, SET, size=d.shape + (length,))).astype(np.int32)


def _builder(rng: np.random.Generator, same_text: bool = False, per_domain: int = 5) -> Builder:
    slot_domain = np.array([2, 0, 3, 1])  # slot i holds domain slot_domain[i]
    text = np.tile(np.arange(SET), 6)  # every token of the domain, 24 tokens
    slot_tokens = np.stack([SET * (0 if same_text else d) + text for d in slot_domain]).astype(np.int32)
    query_domain = np.repeat(np.arange(N), per_domain)
    return Builder(slot_tokens, slot_domain, _domain_tokens(rng, query_domain, 6), query_domain)


def test_perfect_landmark_scores_every_query_top1():
    builder = _builder(np.random.default_rng(0))
    rep = selection_accuracy(_one_hot_model("hsa_mean"), builder, NAMES, [1, 2], 0.95, 0, CPU)
    assert rep["top1"]["acc"] == 1.0 and rep["top1"]["tied"] == 0
    assert rep["top1"]["ci_hi"] == 1.0 and rep["top1"]["ci_lo"] > rep["top1"]["chance"] == 0.25
    assert rep["top2"]["acc"] == 1.0
    assert all(d["acc"] == 1.0 and d["total"] == 5 for d in rep["per_domain"].values())
    confusion = np.array(rep["confusion"])
    assert (confusion == np.diag(np.full(N, 5))).all()  # rows and columns: slot domains in slot order
    assert rep["domain_names"] == [NAMES[d] for d in builder.slot_domain]


@pytest.mark.parametrize("landmark", LANDMARKS)
def test_identical_memories_score_exactly_chance(landmark):
    builder = _builder(np.random.default_rng(1), same_text=True)
    rep = selection_accuracy(_model(landmark, layers=2), builder, NAMES, [1, 3], 0.95, 0, CPU)
    assert rep["top1"]["acc"] == 0.25 == rep["top1"]["chance"]
    assert rep["top3"]["acc"] == 0.75 == rep["top3"]["chance"]
    assert rep["top1"]["tied"] == len(builder.queries)


@pytest.mark.parametrize("landmark", LANDMARKS)
@pytest.mark.parametrize("v2", [True, False])
def test_batch_one_bank_scores_as_its_repeated_copy(landmark, v2):
    model = _model(landmark, v2=v2, layers=2)
    builder = _builder(np.random.default_rng(2))
    bank = builder_bank(model, builder.slot_tokens, CPU)
    scores = query_scores(model, bank, builder.queries, N, CPU)  # [Q, N]
    q = torch.from_numpy(builder.queries.astype(np.int64))
    copies = bank if bank.batch_size is None else bank.repeat(len(q))
    with torch.no_grad():
        assert torch.allclose(scores, model.memory_scores(q, copies), rtol=1e-5, atol=1e-6)


def _selection_task(rng: np.random.Generator, examples: int = 24, seg: int = 8, tgt: int = 8) -> SelectionExamples:
    """Each slot holds every token of one domain (domains shuffled over slots); the target continues
    the true slot's domain, so reading the true slot decides the loss."""
    slot_domain = np.stack([rng.permutation(N) for _ in range(examples)])  # [E, N]
    true_slot = rng.integers(0, N, size=examples)
    target = _domain_tokens(rng, slot_domain[np.arange(examples), true_slot], tgt + 1)  # [E, T+1]
    context = SET * slot_domain[..., None] + np.tile(np.arange(SET), seg // SET)  # [E, N, seg] all domain tokens
    return SelectionExamples({"context": context.astype(np.int32), "target": target,
                              "true_slot": true_slot.astype(np.int64)})


def test_oracle_beats_uniform_and_none_where_memory_decides_the_loss():
    model, data = _one_hot_model("hsa_mean"), _selection_task(np.random.default_rng(3))
    res = selection_perplexity(model, data, 5, ["landmark", "oracle", "uniform", "none"], CPU)
    assert res["oracle"].ppl < res["uniform"].ppl and res["oracle"].ppl < res["none"].ppl
    assert res["oracle"].top_slot_true == 1.0 and res["oracle"].mix_max_weight == 1.0
    assert res["uniform"].top_slot_true == pytest.approx(1 / N)
    assert res["uniform"].mix_max_weight == pytest.approx(1 / N)
    # this landmark selects perfectly too: every target token belongs to the true slot's domain
    assert res["landmark"].top_slot_true == 1.0 and res["oracle"].ppl < res["landmark"].ppl < res["uniform"].ppl
    assert {r.tokens for r in res.values()} == {24 * 8}


def test_selection_perplexity_is_the_mean_token_loss_of_the_written_bank():
    model, data = _model("learned", layers=2), _selection_task(np.random.default_rng(4), examples=6)
    got = selection_perplexity(model, data, 4, ["landmark"], CPU)["landmark"]
    b = data.batch(np.arange(6))
    bank = model.new_bank(6)
    with torch.no_grad():
        for s in range(N):
            model.write_memory(b["context"][:, s], bank, slot=s)
        out = model(b["target"][:, :-1], bank=bank)
        loss = token_loss_sum(out.logits, b["target"][:, 1:]).item() / (6 * 8)
    assert got.loss == pytest.approx(loss, rel=1e-5)
    assert got.ppl == pytest.approx(np.exp(loss), rel=1e-5)


def test_v1_lm_path_reads_an_empty_bank_and_writes_nothing():
    model = _model("memory_norm", v2=False, layers=2)
    chunks = np.random.default_rng(5).integers(0, N * SET, size=(10, 9)).astype(np.int32)
    got = lm_perplexity(model, LMChunks(chunks), 4, "off", CPU)
    ids = torch.from_numpy(chunks.astype(np.int64))
    with torch.no_grad():
        bank = model.new_bank(None)  # fresh, empty; no writes (update_memory False)
        fresh = token_loss_sum(model(ids[:, :-1], bank=bank).logits, ids[:, 1:]).item() / ids[:, 1:].numel()
        assert bank.empty.all()
        no_bank = token_loss_sum(model(ids[:, :-1]).logits, ids[:, 1:]).item() / ids[:, 1:].numel()
    assert got.loss == pytest.approx(fresh, rel=1e-6) and got.loss == pytest.approx(no_bank, rel=1e-6)
    assert got.tokens == 10 * 8 and got.top_slot_true is None
    # eval_memory on: each batch reads what the previous ones wrote
    assert lm_perplexity(model, LMChunks(chunks), 4, "on", CPU).loss != got.loss


def test_empty_splits_give_none():
    model = _model("memory_norm", v2=False)
    assert lm_perplexity(model, LMChunks(np.zeros((0, 9), np.int32)), 4, "off", CPU) is None
    empty = SelectionExamples({"context": np.zeros((0, N, 4), np.int32), "target": np.zeros((0, 5), np.int32),
                               "true_slot": np.zeros(0, np.int64)})
    assert selection_perplexity(_model("learned"), empty, 4, ["landmark"], CPU) is None


def test_reference_mixer_has_no_selection_accuracy():
    with pytest.raises(ValueError, match="no landmark scores"):
        selection_accuracy(_model("oracle"), _builder(np.random.default_rng(6)), NAMES, [1], 0.95, 0, CPU)
