"""Pythia weight import: a tiny random GPTNeoXForCausalLM saved to a temp folder loads into
TransformerLM with identical logits; a non-GPT-NeoX checkpoint is refused clearly."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

from multimem.model.hf_import import CheckpointError, load_gpt_neox


@pytest.mark.parametrize("rotary_pct", [0.25, 1.0])
def test_imported_logits_match_transformers(tmp_path, rotary_pct):
    config = GPTNeoXConfig(vocab_size=97, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=96, rotary_pct=rotary_pct, max_position_embeddings=64)
    torch.manual_seed(0)
    hf = GPTNeoXForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a wrong mapping shows
        for name, p in hf.named_parameters():
            if "layernorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    model = load_gpt_neox(str(tmp_path)).eval()
    assert model.cfg.memory_layer is None and model.cfg.rotary_pct == rotary_pct
    ids = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        expected = hf(ids).logits
        got = model(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_non_gpt_neox_checkpoint_is_refused(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="model_type is 'gpt2'; allowed: gpt_neox"):
        load_gpt_neox(str(tmp_path))


def test_hub_id_fails_fast_offline(monkeypatch):
    from multimem.hub import HubUnavailable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailable, match="HF_HUB_OFFLINE is set"):
        load_gpt_neox("EleutherAI/pythia-70m")
