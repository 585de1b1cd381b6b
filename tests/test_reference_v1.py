"""The project's MultiMemoryLayer in v1 mode computes what v1's code computed: the same
state_dict in both, the same outputs, gradients (None where v1 had none: the learned landmark
while every memory is empty) and memory state over several forward calls that write round-robin
(float64 and float32, memory_norm and learned, simple and delta writes)."""

import copy

import pytest
import torch

from multimem.model.config import MemoryConfig, ModelConfig
from multimem.model.transformer import TransformerLM
from multimem.model.reference_v1 import ReferenceMultiMemoryLayer, new_v1_memories, use_reference_layer

SMALL = dict(vocab_size=53, hidden=32, layers=2, heads=4, ffn=64)
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-5, rtol=1e-5)}


def _pair(landmark, dtype, n=3, write="simple"):
    torch.manual_seed(3)
    mem_cfg = MemoryConfig(num_memories=n, landmark=landmark, write=write)
    model = TransformerLM(ModelConfig(**SMALL, memory=mem_cfg)).to(dtype)
    with torch.no_grad():  # a gate away from 0.5 and a learned landmark that is not tiny
        model.memory_layer.attention.gate.copy_(torch.linspace(-1, 1, SMALL["heads"]))
    ref = use_reference_layer(copy.deepcopy(model))
    return model, ref


@pytest.mark.parametrize("write", ["simple", "delta"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("landmark", ["memory_norm", "learned"])
def test_v1_mode_matches_reference_over_writes(landmark, dtype, write):
    model, ref = _pair(landmark, dtype, write=write)
    assert isinstance(ref.memory_layer, ReferenceMultiMemoryLayer)
    assert model.state_dict().keys() == ref.state_dict().keys()
    bank, mem = model.new_bank(None), new_v1_memories(ref)
    g = torch.Generator().manual_seed(0)
    for step in range(5):  # fills 3 memories round-robin, then overwrites slots 0 and 1
        ids = torch.randint(0, SMALL["vocab_size"], (2, 11), generator=g)
        out = model(ids, bank=bank, update_memory=True)
        want = ref(ids, bank=mem, update_memory=True)
        torch.testing.assert_close(out.logits, want.logits, **TOL[dtype], msg=lambda m: f"step {step}: {m}")
        torch.testing.assert_close(out.mix_weights, want.mix_weights, **TOL[dtype])
        loss, ref_loss = out.logits.square().mean(), want.logits.square().mean()
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        ref_grads = torch.autograd.grad(ref_loss, list(ref.parameters()), allow_unused=True)
        for (name, _), a, b in zip(model.named_parameters(), grads, ref_grads):
            assert (a is None) == (b is None), f"step {step} grad {name}: {a is None} vs {b is None}"
            # v1: with every memory empty (step 0) the learned landmark is never evaluated
            assert (a is None) == (step == 0 and name.endswith("landmark.proj.weight")), f"step {step} {name}"
            if a is not None:
                torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"step {step} grad {name}: {m}")
        assert bank.pointer == mem.pointer == (step + 1) % 3
        torch.testing.assert_close(bank.M, torch.stack(mem.M), **TOL[dtype])
        torch.testing.assert_close(bank.z, torch.stack(mem.z), **TOL[dtype])
    if landmark == "learned":  # memory_norm saturates to one-hot (seed-v1.md §3.3); learned mixes
        assert out.mix_weights.max() < 0.9


def test_reference_without_memories_matches_bank_none():
    model, ref = _pair("learned", torch.float64)
    ids = torch.randint(0, SMALL["vocab_size"], (2, 9))
    torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=1e-12, rtol=1e-12)


def test_reference_refuses_v2_switches():
    cfg = ModelConfig(**SMALL, memory=MemoryConfig(relevance="per_token"))
    with pytest.raises(ValueError, match="model.memory.relevance='per_token'"):
        ReferenceMultiMemoryLayer(cfg)
