"""The report's computed statements: whether a run can compare landmarks, and no landmark conclusion when
it cannot (planted summaries, no pipeline run)."""

from __future__ import annotations

import copy

import pytest

from multimem.evaluation.report_tables import chance_level, conclusions, landmark_table, validity, validity_text
from multimem.params import load_params
from pipeline_helpers import ROOT, tiny_params

P = tiny_params(**{"train.variants": ["oracle", "none", "learned"], "eval.min_bracket": 0.5})


def planted(gap: float, lo: float, hi: float) -> dict:
    s = {"oracle.correct.mean": 0.02 + gap, "none.correct.mean": 0.02, "learned.correct.mean": 0.4,
         "learned.correct.ci_lo": 0.3, "learned.correct.ci_hi": 0.5, "learned.correct.n": 3,
         "cmp.oracle-none.correct.effect": gap, "cmp.oracle-none.correct.ci_lo": lo,
         "cmp.oracle-none.correct.ci_hi": hi, "cmp.oracle-none.correct.significant": lo > 0,
         "learned.choice_bal_acc.mean": 0.6, "learned.choice_bal_acc.ci_lo": 0.55,
         "learned.choice_bal_acc.ci_hi": 0.65, "learned.choice_bal_acc.chance": 0.125,
         "learned.choice_bal_acc.p": 0.001, "learned.choice_collapse.top_share": 0.2,
         "learned.choice_collapse.entropy_norm": 0.95, "failed_runs": {}}
    return s


def test_chance_is_one_over_the_values_on_the_recall_task():
    assert chance_level(P) == 1 / P["memories"]["recall"]["num_values"]
    q = copy.deepcopy(P)
    q["memories"]["task"] = "continuation"
    assert chance_level(q) is None


def test_an_open_bracket_lets_the_run_compare_landmarks():
    v = validity(P, planted(0.7, 0.65, 0.75))
    assert v["can_compare"] and "beats trained none by 70.0%" in v["why"]
    text = conclusions(P, planted(0.7, 0.65, 0.75))
    assert "`learned`" in text and "above chance 12.5%" in text


@pytest.mark.parametrize("gap, lo, hi, why", [
    (0.3, 0.25, 0.35, "short of eval.min_bracket 50.0%"),  # open but smaller than the parameter
    (0.6, -0.1, 1.3, "short of eval.min_bracket"),  # large but its interval includes 0
])
def test_a_closed_bracket_draws_no_landmark_conclusion(gap, lo, hi, why):
    s = planted(gap, lo, hi)
    v = validity(P, s)
    assert not v["can_compare"] and why in v["why"]
    text = conclusions(P, s)
    assert text.startswith("_No landmark conclusions") and "`learned`" not in text
    assert "cannot compare landmarks" in validity_text(P, s)


def test_an_untrained_bracket_or_the_lm_protocol_cannot_compare():
    s = planted(0.7, 0.65, 0.75)
    del s["cmp.oracle-none.correct.effect"]
    assert "bracket was not trained" in validity(P, s)["why"]
    q = copy.deepcopy(P)
    q["train"]["protocol"] = "lm"
    assert not validity(q, planted(0.7, 0.65, 0.75))["can_compare"]


def test_failed_seeds_are_named_and_the_landmark_table_shows_collapse():
    s = planted(0.7, 0.65, 0.75)
    s["failed_runs"] = {"learned-seed2": "the oracle start of seed 2 did not converge"}
    assert "learned-seed2" in validity_text(P, s)
    tbl = landmark_table(P, s)
    assert list(tbl.index) == ["oracle", "none", "learned"]  # the trained bracket beside the landmark
    assert tbl.loc["learned", "top-slot share"] == "20.0%" and tbl.loc["oracle", "top-slot share"] == ""


def test_a_one_seed_perplexity_has_no_interval_and_says_so():
    from multimem.evaluation.report_tables import ppl_table

    q = copy.deepcopy(P)
    q["train"]["variants"] = ["memory_norm", "learned"]
    tbl = ppl_table({"memory_norm.val_ppl.mean": 264.04, "memory_norm.val_ppl.n": 1,
                     "learned.val_ppl.mean": 264.03, "learned.val_ppl.ci_lo": 260.0, "learned.val_ppl.ci_hi": 268.1,
                     "learned.val_ppl.n": 3}, q)
    assert tbl.loc["memory_norm", "val_ppl"] == "264.04 (one seed: no interval)"
    assert tbl.loc["learned", "val_ppl"] == "264.03 [260.00, 268.10]"


def test_plain_context_ceiling_reads_the_true_segment_as_ordinary_context():
    """The continuation ceiling: loss of the target labels after [true segment; target inputs], no bank."""
    import numpy as np
    import torch

    from multimem.evaluation.perplexity import plain_context_perplexity
    from multimem.model import MemoryConfig, ModelConfig, TransformerLM
    from multimem.training.batches import SelectionExamples

    torch.manual_seed(0)
    mem = MemoryConfig(num_memories=3, landmark="none", state="per_example", readout_norm="exact",
                       relevance="per_token", empty="masked", assignment="explicit")
    model = TransformerLM(ModelConfig(vocab_size=64, hidden=16, layers=2, heads=2, ffn=32, layernorm="separate",
                                      memory_layer=1, memory=mem)).eval()
    rng = np.random.default_rng(0)
    ex = SelectionExamples({"context": rng.integers(0, 64, (5, 3, 6)), "target": rng.integers(0, 64, (5, 5)),
                            "true_slot": np.array([0, 2, 1, 1, 0])})
    r = plain_context_perplexity(model, ex, batch_size=2, device=torch.device("cpu"))
    seg = torch.as_tensor(ex.context[np.arange(5), ex.true_slot])  # [5, 6]
    tgt = torch.as_tensor(ex.target)
    with torch.no_grad():
        logits = model(torch.cat([seg, tgt[:, :-1]], 1)).logits[:, 6:]  # predictions of tgt[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), tgt[:, 1:].reshape(-1))
    assert r.tokens == 20 and abs(r.loss - float(ce)) < 1e-5
    # the segment matters: with another slot's segment the loss differs
    other = torch.as_tensor(ex.context[np.arange(5), (ex.true_slot + 1) % 3])
    with torch.no_grad():
        wrong = model(torch.cat([other, tgt[:, :-1]], 1)).logits[:, 6:]
    assert abs(float(torch.nn.functional.cross_entropy(wrong.reshape(-1, 64), tgt[:, 1:].reshape(-1))) - r.loss) > 1e-6


def test_v1_numbers_of_the_note_beside_this_runs():
    from multimem.evaluation.report_tables import v1_beside_note

    v1 = load_params(ROOT / "experiments" / "landmark_v1-demo.yaml")
    runs = [{"variant": "memory_norm", "seed": s, "val_ppl": p, "best_epoch": 3, "params": 1_444_356,
             "sel_initial_top1": 0.2, "sel_trained_top1": 0.25, "sel_queries": 20}
            for s, p in ((0, 264.0), (1, 266.0))]
    tbl = v1_beside_note(v1, runs)
    assert list(tbl.index) == ["memory_norm"]  # only the landmarks this run has
    row = tbl.loc["memory_norm"]
    assert row["best val PPL (note)"] == 105.4 and row["best val PPL (this run)"] == 265.0
    assert row["params (note)"] == 70_418_440 and row["params (this run)"] == 1_444_356
    assert row["selection at random init (note)"] == "20% (4/20)"
    assert row["selection at random init (this run)"] == "20% (4/20), 20% (4/20)"
    assert row["selection trained (this run)"] == "25% (5/20), 25% (5/20)" and row["epoch (this run)"] == "3, 3"
    v2 = load_params(ROOT / "experiments" / "landmark_v2-demo.yaml")
    assert v1_beside_note(v2, runs) is None  # no v1 protocol, nothing to set beside the note
