"""Scoring switches against selection collapse (model.memory.score_centering / score / score_temperature,
landmarks.relevance): on a constructed bank whose slots share a large positive component, plain dot
scores send (nearly) every query to one slot; removing the shared direction or normalising the landmarks
restores the right slot. Defaults reproduce the v1 scores exactly and add no parameters."""

import itertools
import math

import pytest
import torch

from multimem.model.config import LANDMARKS, MemoryConfig, ModelConfig
from multimem.model.memory_bank import MemoryBank
from multimem.model.multimem_layer import MultiMemoryAttention
from multimem.model.transformer import TransformerLM

V2 = dict(state="per_example", readout_norm="exact", relevance="per_token", empty="masked",
          assignment="explicit", landmark_norm="mean", score_scale="sqrt_d", encoder_keys="all_writes")
SMALL = dict(vocab_size=61, hidden=32, layers=2, heads=4, ffn=64)
ENC = dict(encoder_capacity=12, encoder_heads=2, encoder_ffn=32)
SWITCHES = list(itertools.product(("none", "slots", "project"), ("dot", "cosine")))


def small(landmark="memory_norm", n=4, **mem):
    return ModelConfig(**SMALL, layernorm="separate",
                       memory=MemoryConfig(num_memories=n, landmark=landmark, **{**V2, **ENC, **mem}))


# ---- the constructed case -----------------------------------------------------------------------------
# N_FULL slots ℓ_n = α_n c + s_n per head: c a large positive component shared by all slots (α_n within
# ±20% of 1), s_n a small positive bump on 4 dims of its own; N_EMPTY more slots are empty. A query for
# slot k is φq = c (1 + 0.2 u) + s_k / 0.5 + 0.2 noise (positive features, like ELU+1): it matches s_k, but
# its large shared part favours the slot with the largest α under a plain dot product.
D, H, N_FULL, N_EMPTY = 32, 2, 8, 2
N = N_FULL + N_EMPTY
CASE = ModelConfig(vocab_size=61, hidden=D * H, layers=2, heads=H, ffn=64)


def _case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = 1 + 0.5 * torch.rand(H, D, generator=g)  # [H, d]
    alpha = 1 + 0.2 * torch.linspace(-1, 1, N_FULL)[torch.randperm(N_FULL, generator=g)]  # [N_FULL]
    s = torch.zeros(N_FULL, H, D)
    for n in range(N_FULL):
        s[n, :, 4 * n : 4 * n + 4] = 0.5
    return alpha[:, None, None] * c + s, c  # ℓ [N_FULL, H, d], c [H, d]


def _bump(n: int) -> torch.Tensor:
    b = torch.zeros(H, D)
    b[:, 4 * n : 4 * n + 4] = 1.0
    return b


def _queries(c: torch.Tensor, k: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """φq [*k.shape, H, d] for true slots k."""
    g = torch.Generator().manual_seed(seed)
    bumps = torch.stack([_bump(n) for n in range(N_FULL)])  # [N_FULL, H, d]
    shared = c * (1 + 0.2 * torch.rand(*k.shape, 1, 1, generator=g))
    return shared + bumps[k] + 0.2 * torch.rand(*k.shape, H, D, generator=g)


def _bank(ell: torch.Tensor, landmark: str, B: int | None) -> MemoryBank:
    """A bank holding ℓ as the landmark vector of slots 0..N_FULL-1; the last N_EMPTY slots empty."""
    bank = MemoryBank(N, H, D, batch_size=B)
    lead = () if B is None else (B,)
    full = torch.cat([ell, torch.zeros(N_EMPTY, H, D)])  # [N, H, d]
    tokens = torch.cat([torch.ones(N_FULL), torch.zeros(N_EMPTY)])
    bank.tokens = tokens.expand(*lead, N).clone()
    if landmark == "hsa_mean":
        bank.key_sum = full.expand(*lead, N, H, D).clone()  # ℓ = key_sum / tokens
    else:
        bank.z = full.expand(*lead, N, H, D).clone()  # memory_norm ℓ = z / tokens; learned: W_l = I
    return bank


def _attention(landmark: str, **mem) -> MultiMemoryAttention:
    m = dict(V2, num_memories=N, landmark=landmark, **mem)
    att = MultiMemoryAttention(CASE.replace(memory=MemoryConfig(**m)))
    if landmark == "learned":
        with torch.no_grad():
            att.landmark.proj.weight.copy_(torch.eye(D))
    return att


def measure(landmark: str, centering: str, score: str, relevance: str = "per_token", state: str = "per_example",
            top_k: int = 0, empty: str = "masked") -> dict[str, float]:
    """Selection on the constructed case: share of queries sent to the most-chosen slot, accuracy (argmax of
    the head-mean score = the true slot), mean mixing weight on the true slot (head mean)."""
    ell, c = _case()
    if relevance == "per_token":  # 2 examples × 512 positions, 64 queries per slot each
        B, S = 2, 8 * 64
        k = torch.arange(N_FULL).repeat_interleave(64).expand(B, S)  # [B, S]
    else:  # one score per sequence: 8 × 32 examples of 4 tokens, all tokens of an example ask one slot
        B, S = 8 * 32, 4
        k = torch.arange(N_FULL).repeat_interleave(32)[:, None].expand(B, S)
    phi = _queries(c, k).permute(0, 2, 1, 3)  # [B, H, S, d]
    att = _attention(landmark, score_centering=centering, score=score, relevance=relevance, state=state,
                     top_k=top_k, empty=empty)
    bank = _bank(ell, landmark, None if state == "shared" else B)
    h = torch.zeros(B, S, CASE.hidden)
    with torch.no_grad():
        r = att.scores(h, phi, bank, sq=phi)  # [B, H, S, N]
        w = att.mix_weights(h, phi, bank, landmark, None, sq=phi)  # [B, H, S, N]
    choice = r.mean(1).argmax(-1)  # [B, S]
    if relevance == "sequence_mean":
        choice, k, w = choice[:, 0], k[:, 0], w[:, :, :1]
    counts = torch.bincount(choice.flatten(), minlength=N)
    true_w = w.mean(1).gather(-1, k.reshape(w.shape[0], -1, 1)).mean()
    return {"top_share": counts.max().item() / choice.numel(), "accuracy": (choice == k).float().mean().item(),
            "true_weight": true_w.item(), "choice": choice}


CONSTRUCTED = ["memory_norm", "learned", "hsa_mean"]  # landmarks whose ℓ a test can set (hsa_encoder: below)


@pytest.mark.parametrize("state", ["per_example", "shared"])
@pytest.mark.parametrize("relevance", ["per_token", "sequence_mean"])
@pytest.mark.parametrize("landmark", CONSTRUCTED)
def test_dot_collapses_and_projection_or_cosine_restore_selection(landmark, relevance, state):
    res = {(c, s): measure(landmark, c, s, relevance, state) for c, s in SWITCHES}
    dot = res["none", "dot"]
    assert dot["top_share"] >= 0.9 and dot["accuracy"] <= 0.3, dot  # v1 scoring: collapse
    # slots centring alone shifts every score of a query by φq·ū: the same choices as plain dot
    assert torch.equal(res["slots", "dot"]["choice"], dot["choice"])
    for fix in [("none", "cosine"), ("project", "dot"), ("project", "cosine")]:
        assert res[fix]["accuracy"] >= 0.9 and res[fix]["top_share"] <= 0.2, (fix, res[fix])
    assert res["project", "cosine"]["true_weight"] >= 0.9, res["project", "cosine"]  # and mixes it sharply
    # centring then cosine keeps the shared direction in ℓ_n − ū (sign of α_n − ᾱ): still collapsed here
    assert res["slots", "cosine"]["accuracy"] <= 0.5, res["slots", "cosine"]


@pytest.mark.parametrize("empty", ["masked", "zero_score"])
def test_top_k_one_mixes_the_slot_the_switches_choose(empty):
    dot = measure("memory_norm", "none", "dot", top_k=1, empty=empty)
    fixed = measure("memory_norm", "project", "cosine", top_k=1, empty=empty)
    assert dot["true_weight"] <= 0.3 < 0.9 <= fixed["true_weight"], (dot["true_weight"], fixed["true_weight"])


# ---- exactness: defaults = the v1 formula; every switch = its equation ---------------------------------
def _filled(model: TransformerLM, B: int, keep: list[list[int]] | int, L: int = 6) -> MemoryBank:
    """Per-example bank: every slot written, then all but keep[b] emptied again in example b;
    shared: slots 0..keep-1 written."""
    g = torch.Generator().manual_seed(3)
    if model.cfg.memory.state == "shared":
        bank = model.new_bank(None)
        for s in range(keep):
            model.write_memory(torch.randint(0, SMALL["vocab_size"], (B, L), generator=g), bank, s)
        return bank
    n = model.cfg.memory.num_memories
    bank = model.new_bank(B)
    model.write_memories(torch.randint(0, SMALL["vocab_size"], (B, n, L), generator=g), bank)
    erase = torch.ones(B, n, dtype=torch.bool)
    for b, slots in enumerate(keep):
        erase[b, slots] = False
    for name in ("M", "z", "key_sum", "tokens", "keys", "key_len"):
        t = getattr(bank, name)
        setattr(bank, name, t.masked_fill(erase.view(B, n, *(1,) * (t.dim() - 2)), 0))
    return bank


def _reference(att: MultiMemoryAttention, h, q, bank) -> torch.Tensor:
    """The scoring equations of landmarks.py, one example, head and slot at a time."""
    lm, m = att.landmark, att.mem
    phi = lm.query(h, q, None)  # [B, H, S, d]
    ell = lm.vectors(bank)  # [*, N, H, d]
    B, Hh, S, d = phi.shape
    Nn = ell.shape[-3]
    empty = bank.empty
    r = torch.zeros(B, Hh, S, Nn, dtype=phi.dtype)
    for b in range(B):
        L = ell if ell.dim() == 3 else ell[b]  # [N, H, d]
        e = empty if empty.dim() == 1 else empty[b]  # [N]
        for hh in range(Hh):
            qq, ll = phi[b, hh], L[:, hh]  # [S, d], [N, d]
            full = ll[~e]
            mean = full.mean(0) if len(full) else torch.zeros(d, dtype=ll.dtype)
            if m.score_centering in ("slots", "project"):
                ll = ll - mean
            if m.score_centering == "project":
                u = mean / max(mean.norm().item(), m.eps)
                ll = ll - torch.outer(ll @ u, u)
                qq = qq - torch.outer(qq @ u, u)
            if m.score == "cosine":
                ll = math.sqrt(d) * ll / ll.norm(dim=-1, keepdim=True).clamp_min(m.eps)
                qq = math.sqrt(d) * qq / qq.norm(dim=-1, keepdim=True).clamp_min(m.eps)
            rr = qq @ ll.T  # [S, N]
            if m.relevance == "sequence_mean":
                rr = rr.mean(0, keepdim=True).expand(S, Nn)
            if m.score_temperature == "learned":
                rr = rr * lm.log_temperature[hh].exp()
            elif lm.always_scaled or m.score_scale == "sqrt_d":
                rr = rr / math.sqrt(d)
            rr = rr.masked_fill(e, 0.0 if m.empty == "zero_score" else float("-inf"))
            r[b, hh] = rr
    return r


V1 = dict(state="shared", readout_norm="v1", relevance="sequence_mean", empty="zero_score",
          assignment="round_robin", landmark_norm="sum", score_scale="none", encoder_keys="last_write")


def _setup(landmark, v2, seed=0, **mem):
    torch.manual_seed(seed)
    base = {**(V2 if v2 else V1), **ENC, **mem}
    model = TransformerLM(ModelConfig(**SMALL, layernorm="separate", memory=MemoryConfig(
        num_memories=4, landmark=landmark, **base))).double()
    B = 3
    slots = [[0, 2], [1], [0, 1, 2, 3]] if v2 else 2  # example 1: a single non-empty slot
    bank = _filled(model, B, slots)
    ids = torch.randint(0, SMALL["vocab_size"], (B, 7))
    layer = model.memory_layer
    h = layer.input_layernorm(model._memory_input(ids))
    q, _, _ = layer.attention.qkv(h)
    return model, layer.attention, bank, h, q


@pytest.mark.parametrize("v2", [True, False], ids=["v2", "v1"])
@pytest.mark.parametrize("landmark", LANDMARKS)
def test_defaults_reproduce_the_v1_formula_exactly(landmark, v2):
    _, att, bank, h, q = _setup(landmark, v2)
    m = att.mem
    assert (m.score_centering, m.score, m.score_temperature) == ("none", "dot", "fixed")
    phi = att.landmark.query(h, q, None)
    if m.relevance == "sequence_mean":
        phi = phi.mean(dim=2, keepdim=True)
    ell = att.landmark.vectors(bank)
    r = torch.einsum("bhsd,nhd->bhsn" if ell.dim() == 3 else "bhsd,bnhd->bhsn", phi, ell)
    if att.landmark.always_scaled or m.score_scale == "sqrt_d":
        r = r / math.sqrt(phi.shape[-1])
    e = bank.empty if bank.empty.dim() == 1 else bank.empty[:, None, None, :]
    r = r.masked_fill(e.expand_as(r), 0.0 if m.empty == "zero_score" else float("-inf")).expand(*q.shape[:3], -1)
    assert torch.equal(att.scores(h, q, bank), r)  # bit for bit
    assert torch.allclose(att.scores(h, q, bank), _reference(att, h, q, bank))


@pytest.mark.parametrize("temperature", ["fixed", "learned"])
@pytest.mark.parametrize("centering,score", SWITCHES)
@pytest.mark.parametrize("landmark", LANDMARKS)
def test_every_switch_follows_its_equation(landmark, centering, score, temperature):
    for state, relevance, empty in [("per_example", "per_token", "masked"), ("shared", "sequence_mean", "zero_score")]:
        _, att, bank, h, q = _setup(landmark, state == "per_example", score_centering=centering, score=score,
                                    score_temperature=temperature, relevance=relevance, empty=empty)
        if temperature == "learned":
            with torch.no_grad():
                att.landmark.log_temperature.add_(torch.linspace(-0.3, 0.4, SMALL["heads"], dtype=torch.float64))
        torch.testing.assert_close(att.scores(h, q, bank), _reference(att, h, q, bank))


def test_centring_uses_non_empty_slots_only():
    """What an empty slot's landmark vector holds (hsa_encoder: the encoder of [CLS] alone) changes no score."""
    _, att, bank, h, q = _setup("hsa_encoder", True, score_centering="slots", score="cosine")
    before = att.scores(h, q, bank)
    bank.keys = bank.keys + 5.0 * bank.empty[..., None, None, None]  # only empty slots' (unused) keys
    vec = att.landmark.vectors(bank)
    e = bank.empty
    assert not torch.allclose(vec[e], torch.zeros_like(vec[e]))  # empty slots do have (nonzero) vectors
    assert torch.equal(att.scores(h, q, bank), before)
    # and a tampered empty-slot vector would change the scores if it entered the mean
    lm = att.landmark
    tampered = torch.where(e[..., None, None], vec + 100.0, vec)
    from multimem.model.landmarks import relevance
    phi = lm.query(h, q, None)
    full = ~e[:, None, None, :]
    kept = relevance(lm, phi, tampered, "sqrt_d", empty=e)
    leaked = relevance(lm, phi, tampered, "sqrt_d", empty=torch.zeros_like(e))
    assert torch.allclose(kept[full.expand_as(kept)], before[full.expand_as(before)])
    assert not torch.allclose(leaked[full.expand_as(leaked)], before[full.expand_as(before)])


# ---- empty slots, gradients, parameters ----------------------------------------------------------------
@pytest.mark.parametrize("empty", ["masked", "zero_score"])
@pytest.mark.parametrize("landmark", LANDMARKS)
def test_single_or_no_non_empty_slot_stays_finite(landmark, empty):
    for centering, score in SWITCHES:
        model, att, _, _, _ = _setup(landmark, True, score_centering=centering, score=score,
                                     score_temperature="learned", empty=empty)
        bank = _filled(model, 3, [[2], [], [0, 1, 3]])  # one slot / none / three
        ids = torch.randint(0, SMALL["vocab_size"], (3, 7))
        out = model(ids, bank=bank)
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.mix_weights).all()
        r = model.memory_scores(ids, bank)
        assert torch.isfinite(r[0, 2]) and torch.isfinite(r[2][[0, 1, 3]]).all()
        if centering != "none":  # a single slot minus its own mean: ℓ' = 0, score 0
            assert r[0, 2].item() == 0.0
        out.logits.sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_learned_temperature_starts_at_the_fixed_scale_and_gets_gradients():
    for landmark in LANDMARKS:
        _, fixed, bank, h, q = _setup(landmark, True, score_centering="project", score="cosine")
        model, learned, _, _, _ = _setup(landmark, True, score_centering="project", score="cosine",
                                         score_temperature="learned")
        learned.load_state_dict(fixed.state_dict(), strict=False)
        tau = learned.landmark.log_temperature
        assert tau.shape == (SMALL["heads"],)
        torch.testing.assert_close(tau.exp(), torch.full_like(tau, SMALL["heads"] / SMALL["hidden"]) ** 0.5)
        torch.testing.assert_close(learned.scores(h, q, bank), fixed.scores(h, q, bank))
        ids = torch.randint(0, SMALL["vocab_size"], (3, 7))
        model(ids, bank=bank, labels=ids).loss_sum.backward()
        assert tau.grad is not None and torch.isfinite(tau.grad).all() and tau.grad.abs().min() > 0, landmark


def test_learned_temperature_sharpens_the_right_choice():
    """Cosine without centring picks the right slot on the constructed case, but every cos(φq, ℓ_n) is
    close to 1 (the shared component), so at the fixed scale (1/√d · d·cos) the softmax is nearly flat;
    fitting τ alone (30 Adam steps) puts the weight on the true slot. (Projection + cosine is sharp already.)"""
    ell, c = _case()
    B, S = 2, 8 * 16
    k = torch.arange(N_FULL).repeat_interleave(16).expand(B, S)
    phi = _queries(c, k).permute(0, 2, 1, 3)
    att = _attention("memory_norm", score_centering="none", score="cosine", score_temperature="learned")
    bank, h = _bank(ell, "memory_norm", B), torch.zeros(B, S, CASE.hidden)
    tau = att.landmark.log_temperature
    opt = torch.optim.Adam([tau], lr=0.2)

    def true_weight():
        w = att.mix_weights(h, phi, bank, "memory_norm", None, sq=phi)  # [B, H, S, N]
        return w.gather(-1, k[:, None, :, None].expand(B, H, S, 1)).squeeze(-1)  # [B, H, S]

    before = true_weight().mean().item()
    for _ in range(30):
        opt.zero_grad()
        (-true_weight().log().mean()).backward()
        opt.step()
    after = true_weight().mean().item()
    assert (tau > -0.5 * math.log(D) + 1.0).all(), tau  # the scale grew
    assert before < 0.3 and after > 0.9, (before, after)


@pytest.mark.parametrize("landmark,expected", [("memory_norm", 70_418_440), ("hsa_mean", 70_418_440),
                                               ("learned", 70_422_536)])
def test_parameter_counts(landmark, expected):
    """Defaults (and centring / cosine, which have no parameters) keep v1's counts; learned adds H per layer."""
    with torch.device("meta"):
        counts = {t: TransformerLM(ModelConfig(memory=MemoryConfig(
            landmark=landmark, score_centering="project" if t == "nondefault" else "none",
            score="cosine" if t == "nondefault" else "dot",
            score_temperature="learned" if t == "learned" else "fixed"))).num_parameters()
            for t in ("default", "nondefault", "learned")}
        oracle = TransformerLM(ModelConfig(memory=MemoryConfig(landmark="oracle", score_temperature="learned")))
    assert counts == {"default": expected, "nondefault": expected, "learned": expected + 8}
    assert oracle.num_parameters() == 70_418_440  # reference mixers have no landmark, so no temperature


@pytest.mark.parametrize("key,value,allowed", [
    ("score_centering", "mean", "none, slots, project"),
    ("score", "cos", "dot, cosine"),
    ("score_temperature", "auto", "fixed, learned"),
])
def test_bad_switch_values_name_the_key_and_the_allowed_values(key, value, allowed):
    with pytest.raises(ValueError, match=f"model.memory.{key}='{value}'; allowed: {allowed}"):
        MemoryConfig(**{key: value})


def test_v1_reference_layer_refuses_the_new_switches():
    from multimem.model.reference_v1 import check_v1
    check_v1(ModelConfig(**SMALL))
    for key, value in (("score_centering", "project"), ("score", "cosine"), ("score_temperature", "learned")):
        with pytest.raises(ValueError, match=f"model.memory.{key}='{value}'"):
            check_v1(ModelConfig(**SMALL, memory=MemoryConfig(**{key: value})))


@pytest.mark.parametrize("key,value,allowed", [
    ("score_centering", "mean", "none, slots, project"),
    ("score", "cos", "dot, cosine"),
    ("score_temperature", True, "fixed, learned"),
])
def test_params_validation_names_the_key_and_the_allowed_values(key, value, allowed):
    from pathlib import Path

    from multimem.params import ParamsError, load_params, validate_params
    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    p["model"]["memory"][key] = value
    with pytest.raises(ParamsError, match=f"model.memory.{key}: .*allowed: {allowed}"):
        validate_params(p)
