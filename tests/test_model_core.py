"""The model core: v1's parameter counts, the v1 switches and their corrected values,
causality, empty memories, the memory-bank API."""

import dataclasses

import pytest
import torch

from multimem.model.config import LANDMARKS, MIXERS, MemoryConfig, ModelConfig
from multimem.model.transformer import TransformerLM
from multimem.model.multimem_layer import MultiMemoryAttention

V2 = dict(state="per_example", readout_norm="exact", relevance="per_token", empty="masked",
          assignment="explicit", landmark_norm="mean", score_scale="sqrt_d", encoder_keys="all_writes")
SMALL = dict(vocab_size=61, hidden=32, layers=2, heads=4, ffn=64)
ENC = dict(encoder_capacity=12, encoder_heads=2, encoder_ffn=32)


def small(landmark="memory_norm", v2=True, n=4, **mem):
    switches = {**(V2 if v2 else {}), **ENC, **mem}
    return ModelConfig(**SMALL, layernorm="separate" if v2 else "shared",
                       memory=MemoryConfig(num_memories=n, landmark=landmark, **switches))


@pytest.mark.parametrize("landmark,expected", [("memory_norm", 70_418_440), ("hsa_mean", 70_418_440),
                                               ("learned", 70_422_536)])
def test_v1_parameter_counts(landmark, expected):
    with torch.device("meta"):
        model = TransformerLM(ModelConfig(memory=MemoryConfig(landmark=landmark)))
    assert model.num_parameters() == expected


def test_hsa_encoder_adds_seed_parameter_count():
    with torch.device("meta"):
        base = TransformerLM(ModelConfig()).num_parameters()
        enc = TransformerLM(ModelConfig(memory=MemoryConfig(landmark="hsa_encoder"))).num_parameters()
    assert enc - base == 1_095_168


def test_pythia_layer_with_two_layernorms_is_gpt_neox_shape():
    with torch.device("meta"):
        m = TransformerLM(ModelConfig(memory_layer=None, layernorm="separate"))
    assert m.num_parameters() == 51_511_296 + 1024 + 6 * (3_151_360 + 1024)  # Pythia-70M: 70,426,624


def _attention(readout_norm, n=4):
    cfg = ModelConfig(**SMALL, memory=MemoryConfig(num_memories=n, readout_norm=readout_norm))
    torch.manual_seed(1)
    return MultiMemoryAttention(cfg)


def test_v1_readout_is_one_over_S_of_exact():
    B, S = 3, 16
    k, v, q = (torch.randn(B, 4, S, 8) for _ in range(3))
    reads = {}
    for norm in ("v1", "exact"):
        att = _attention(norm)
        bank = TransformerLM(ModelConfig(**SMALL, memory=att.mem)).new_bank(None)
        att.write(k, v, bank, 0)
        reads[norm] = att.read(q, bank)[:, :, :, 0]  # [B, H, S, d]
    torch.testing.assert_close(reads["v1"] * S, reads["exact"], rtol=1e-5, atol=1e-6)
    assert reads["exact"].abs().mean() > 0.1


def _filled(model, B, n_written, L=6, detach=True):
    bank = model.new_bank(B if model.cfg.memory.state == "per_example" else None)
    for s in range(n_written):
        ids = torch.randint(0, SMALL["vocab_size"], (B, L))
        if model.cfg.memory.state == "per_example":
            model.write_memory(ids, bank, torch.full((B,), s), detach=detach)
        else:
            model.write_memory(ids, bank, s, detach=detach)
    return bank


def test_v1_one_score_per_sequence_corrected_per_token():
    ids = torch.randint(0, SMALL["vocab_size"], (2, 12))
    for v2, per_seq in ((False, True), (True, False)):
        model = TransformerLM(small("learned", v2=v2))
        w = model(ids, bank=_filled(model, 2, 3)).mix_weights  # [B, H, S, N]
        same_over_t = torch.allclose(w, w[:, :, :1].expand_as(w))
        assert same_over_t == per_seq


@pytest.mark.parametrize("mixer", MIXERS)
def test_corrected_mode_is_causal(mixer):
    landmark = mixer if mixer in LANDMARKS else "learned"
    model = TransformerLM(small(landmark)).double()
    B, S, t = 2, 10, 4
    bank = _filled(model, B, 3)
    layer = model.memory_layer
    x = torch.randn(B, S, SMALL["hidden"], dtype=torch.float64, requires_grad=True)
    out = layer(x, bank, mixer=mixer if mixer not in LANDMARKS else None, oracle_slot=torch.tensor([0, 2])).out
    (grad,) = torch.autograd.grad(out[:, t].sum(), x)
    assert grad[:, t + 1:].abs().max().item() == 0.0
    assert grad[:, : t + 1].abs().max().item() > 0.0


def test_v1_relevance_is_not_causal():
    """seed-v1.md §3.4: the sequence-mean relevance leaks future queries into position 0."""
    model = TransformerLM(small("learned", v2=False)).double()
    bank = _filled(model, 2, 3)
    x = torch.randn(2, 10, SMALL["hidden"], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(model.memory_layer(x, bank).out[:, 0].sum(), x)
    assert grad[:, -1].abs().max().item() > 0.0


@pytest.mark.parametrize("v2", [True, False], ids=["v2", "v1"])
@pytest.mark.parametrize("landmark", MIXERS)
def test_empty_bank_is_finite_and_contributes_zero(landmark, v2):
    model = TransformerLM(small(landmark, v2=v2))
    B = 2
    bank = _filled(model, B, 2)
    bank.reset()
    ids = torch.randint(0, SMALL["vocab_size"], (B, 9))
    kw = dict(oracle_slot=torch.tensor([1, 0]))
    with_empty = model(ids, bank=bank, **kw)
    without = model(ids, bank=None)
    assert torch.isfinite(with_empty.logits).all()
    assert torch.equal(with_empty.logits, without.logits)
    # first forward that also writes (v1 protocol) stays finite
    if not v2:
        assert torch.isfinite(model(ids, bank=bank, update_memory=True, **kw).logits).all()
        assert torch.isfinite(model(ids, bank=bank, update_memory=True, **kw).logits).all()


def test_masked_excludes_empty_memories_zero_score_does_not():
    ids = torch.randint(0, SMALL["vocab_size"], (2, 5))
    for empty, mass_on_empty in (("masked", False), ("zero_score", True)):
        model = TransformerLM(small("memory_norm", empty=empty))
        w = model(ids, bank=_filled(model, 2, 2)).mix_weights  # slots 2, 3 empty
        assert (w[..., 2:].sum() > 0).item() == mass_on_empty


def test_round_robin_pointer_advances_per_forward():
    model = TransformerLM(small(v2=False, n=3))
    bank = model.new_bank(None)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 5))
    for step in range(4):
        model(ids, bank=bank, update_memory=True)
        assert bank.pointer == (step + 1) % 3
    assert bank.tokens.tolist() == [10.0, 5.0, 5.0]  # slot 0 written twice (B=2 shares one write)


def test_memory_norm_saturates_in_v1_not_in_v2():
    """seed-v1.md §3.3: with z summed over writes the softmax is one-hot."""
    maxes = {}
    for v2 in (False, True):
        model = TransformerLM(small("memory_norm", v2=v2, n=4))
        ids = torch.randint(0, SMALL["vocab_size"], (4, 64))
        bank = model.new_bank(4 if v2 else None)
        for s in range(4):
            for _ in range(s + 1):  # slot s written s+1 times
                model.write_memory(torch.randint(0, SMALL["vocab_size"], (4, 64)), bank,
                                   torch.full((4,), s) if v2 else s)
        maxes[v2] = model(ids, bank=bank).mix_weights.max(-1).values.mean().item()
    assert maxes[False] > 0.99 and maxes[True] < 0.9


def test_delta_rule_stores_only_what_is_new():
    model = TransformerLM(small(write="delta"))
    bank = model.new_bank(1)
    ids = torch.randint(0, SMALL["vocab_size"], (1, 1))
    model.write_memory(ids, bank, 0)
    M1 = bank.M.clone()
    model.write_memory(ids, bank, 0)  # the same single-token association again
    torch.testing.assert_close(bank.M, M1, atol=1e-6, rtol=0)


def test_top_k_mixing_keeps_k_memories():
    model = TransformerLM(small("learned", top_k=2))
    w = model(torch.randint(0, SMALL["vocab_size"], (2, 7)), bank=_filled(model, 2, 4)).mix_weights
    assert ((w > 0).sum(-1) == 2).all()


def test_all_writes_key_buffer_keeps_most_recent_keys():
    model = TransformerLM(small("hsa_encoder", encoder_capacity=8))
    bank = model.new_bank(1)
    writes = [torch.randint(0, SMALL["vocab_size"], (1, 5)) for _ in range(3)]
    keys = []
    for ids in writes:
        model.write_memory(ids, bank, torch.tensor([1]))
        h = model.memory_layer.input_layernorm(model.embed_in(ids))
        keys.append(model.memory_layer.attention.qkv(h)[1][0])  # [H, 5, d]
    expected = torch.cat(keys, dim=1)[:, -8:]  # the most recent 8 of 15 keys
    assert bank.key_len.tolist() == [[0, 8, 0, 0]]
    torch.testing.assert_close(bank.keys[0, 1], expected)
    last = TransformerLM(dataclasses.replace(model.cfg, memory=dataclasses.replace(
        model.cfg.memory, encoder_keys="last_write")))
    last.load_state_dict(model.state_dict())
    bank2 = last.new_bank(1)
    for ids in writes:
        last.write_memory(ids, bank2, torch.tensor([1]))
    assert bank2.key_len.tolist() == [[0, 5, 0, 0]]
    torch.testing.assert_close(bank2.keys[0, 1, :, :5], keys[-1])


@pytest.mark.parametrize("v2", [True, False], ids=["per_example", "shared"])
def test_bank_save_load_round_trips_bit_exactly(tmp_path, v2):
    model = TransformerLM(small("hsa_encoder", v2=v2))
    bank = _filled(model, 3, 3)
    bank.pointer = 2
    torch.save(bank.state_dict(), tmp_path / "bank.pt")
    other = model.new_bank(3 if v2 else None)
    other.load_state_dict(torch.load(tmp_path / "bank.pt", weights_only=True))
    for name in ("M", "z", "key_sum", "tokens", "keys", "key_len"):
        assert torch.equal(getattr(bank, name), getattr(other, name)), name
    assert other.pointer == 2


def test_differentiable_write_reaches_key_value_projections():
    model = TransformerLM(small("learned"))
    bank = _filled(model, 2, 3, detach=False)
    loss = model(torch.randint(0, SMALL["vocab_size"], (2, 5)), bank=bank).logits.square().mean()
    loss.backward()
    assert model.memory_layer.attention.k_proj.weight.grad.abs().sum() > 0
    assert model.memory_layer.attention.landmark.proj.weight.grad.abs().sum() > 0


def test_bad_switch_names_the_parameter():
    with pytest.raises(ValueError, match=r"model.memory.relevance='causal'; allowed: sequence_mean, per_token"):
        MemoryConfig(relevance="causal")
    with pytest.raises(ValueError, match="model.memory.landmark"):
        MemoryConfig(landmark="mean")


def test_repeat_bank_scores_like_the_original():
    model = TransformerLM(small("learned"))
    bank = _filled(model, 1, 3)
    ids = torch.randint(0, SMALL["vocab_size"], (5, 7))
    many = bank.repeat(5)
    for i in range(5):
        torch.testing.assert_close(model.memory_scores(ids[i : i + 1], bank)[0], model.memory_scores(ids, many)[i])


@pytest.mark.parametrize("v2", [True, False], ids=["v2", "v1"])
@pytest.mark.parametrize("write", ["simple", "delta"])
def test_write_memories_equals_one_write_per_slot(v2, write):
    model = TransformerLM(small("hsa_encoder", v2=v2, write=write, n=3)).double()
    B = 2
    context = torch.randint(0, SMALL["vocab_size"], (B, 3, 7))
    one, every = (model.new_bank(B if v2 else None) for _ in range(2))
    for bank in (one, every):  # a first write, so the delta rule has something to subtract
        model.write_memories(torch.randint(0, SMALL["vocab_size"], (B, 3, 5), generator=torch.Generator().manual_seed(1)), bank)
    for s in range(3):
        model.write_memory(context[:, s], one, torch.full((B,), s) if v2 else s)
    model.write_memories(context, every)
    for name in ("M", "z", "key_sum", "tokens", "keys", "key_len"):
        torch.testing.assert_close(getattr(one, name), getattr(every, name), rtol=1e-12, atol=1e-12, msg=name)


def test_chunked_head_loss_matches_full_logits_value_and_gradients(monkeypatch):
    import multimem.model.transformer as model_module

    monkeypatch.setattr(model_module, "LOSS_CHUNK", 7)  # several chunks, the last one short
    model = TransformerLM(small("learned"))
    ids = torch.randint(0, SMALL["vocab_size"], (3, 11))
    labels = torch.randint(0, SMALL["vocab_size"], (3, 11))

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    bank = _filled(model, 3, 2)
    full = torch.nn.functional.cross_entropy(model(ids, bank=bank).logits.reshape(-1, SMALL["vocab_size"]),
                                             labels.reshape(-1), reduction="sum")
    g_full = grads(full)
    out = model(ids, bank=bank, labels=labels)
    assert out.logits is None
    torch.testing.assert_close(out.loss_sum, full, rtol=1e-6, atol=1e-5)
    g_chunked = grads(out.loss_sum)
    assert g_full.keys() == g_chunked.keys()
    for name in g_full:
        torch.testing.assert_close(g_chunked[name], g_full[name], rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("v2", [True, False], ids=["per_example", "shared"])
def test_folded_readout_equals_weighted_sum_of_every_memory(v2):
    from multimem.model.linear_attention import feature_map

    model = TransformerLM(small("learned", v2=v2)).double()
    bank = _filled(model, 2, 3)
    att = model.memory_layer.attention
    q = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    w = torch.softmax(torch.randn(2, 4, 9, 4, dtype=torch.float64), -1)  # [B, H, S, N]
    expected = (w.unsqueeze(-1) * att.read(q, bank)).sum(3)  # Σ_n w_n A_n
    torch.testing.assert_close(att.read_mixed(feature_map(q), w, bank), expected, rtol=1e-10, atol=1e-12)
