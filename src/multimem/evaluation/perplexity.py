"""Perplexity under the experiment's memory protocol (multimem.training.protocols), without gradients.

lm (v1)          LM chunks [n, L]: input chunks[:, :-1], labels chunks[:, 1:]. The LM protocol's own
                 validation pass, batch for batch: the shared bank is reset first; eval_memory "off"
                 (v1) then reads an EMPTY bank with no writes, "on" writes every batch after its read.
selection (v2)   per example N context segments written to N slots (context[:, s] -> slot s, a fresh
                 bank per batch), then the target: input target[:, :-1], labels target[:, 1:]. The
                 bank is written once per batch and read by every requested mixer:
                 "landmark" = the run's own landmark, or a reference mixer "oracle" (oracle_slot =
                 true_slot), "uniform", "none". For each mixer also: the fraction of target tokens
                 whose head-averaged top memory is the true slot, and the mean largest mixing weight.
                 eval_memory "off" (v1's validation) skips the writes: every mixer reads an empty bank.

Batches follow validation's order and size (rows 0..n-1 in `batch_size` blocks), so the loss of a
run's best weights on its validation split equals train_summary.json's best_val_loss on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from multimem.model.transformer import TransformerLM
from multimem.evaluation.selection_metrics import mean_max_weight, token_top_slot_fraction
from multimem.training.batches import DataFormatError, LMChunks, SelectionExamples, batch_rows, steps_per_epoch
from multimem.training.loop import perplexity
from multimem.training.protocols import LMProtocol

EVAL_MIXERS = ("landmark", "oracle", "uniform", "none")


@dataclass(frozen=True)
class Perplexity:
    """One pass over a split: mean token cross-entropy (nats), its exp, the token count and, where the
    memory layer mixed memories, top_slot_true / mix_max_weight (None otherwise); for the selection
    protocol also the accuracy of the scored tokens (recall: value accuracy) and per-example results."""

    loss: float
    ppl: float
    tokens: int
    top_slot_true: float | None = None
    mix_max_weight: float | None = None
    acc: float | None = None
    examples: dict[str, np.ndarray] | None = None  # per example: loss, correct, tokens, chosen_slot, true_slot


def per_example(logits: torch.Tensor, labels: torch.Tensor, scored: torch.Tensor,
                mix: torch.Tensor | None) -> dict[str, np.ndarray]:
    """Per-example results of one batch: logits [B, T, V], labels [B, T], scored [B, T] bool, mix weights
    [B, H, T, N] or None -> loss (mean CE over the scored tokens), correct (fraction of them predicted
    right), tokens, chosen_slot (argmax over slots of the weights averaged over heads and scored
    positions; -1 without a landmark's weights) — each [B]."""
    ce = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels.clamp_min(0),
                                           reduction="none")  # [B, T]
    s = scored.float()
    n = s.sum(1).clamp_min(1.0)  # [B]
    hit = (logits.argmax(-1) == labels).float() * s
    if mix is None:
        chosen = torch.full((labels.shape[0],), -1, dtype=torch.long)
    else:
        chosen = (mix.float().mean(1) * s[..., None]).sum(1).argmax(-1)  # [B]
    return {"loss": ((ce * s).sum(1) / n).cpu().numpy(), "correct": (hit.sum(1) / n).cpu().numpy(),
            "tokens": s.sum(1).long().cpu().numpy(), "chosen_slot": chosen.cpu().numpy()}


class _Sums:
    def __init__(self) -> None:
        self.loss_sum, self.tokens, self.top, self.max, self.weighted = 0.0, 0, 0.0, 0.0, 0
        self.hits, self.parts = 0.0, []

    def add(self, loss_sum: torch.Tensor, tokens: int, mix: torch.Tensor | None = None,
            true_slot: torch.Tensor | None = None) -> None:
        self.loss_sum += float(loss_sum)
        self.tokens += tokens
        if mix is not None and true_slot is not None:
            n = mix.shape[0] * mix.shape[2]  # B * S tokens
            self.top += token_top_slot_fraction(mix, true_slot) * n
            self.max += mean_max_weight(mix) * n
            self.weighted += n

    def result(self) -> Perplexity:
        loss = self.loss_sum / self.tokens
        w = self.weighted
        examples = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]} if self.parts else None
        return Perplexity(loss, perplexity(loss), self.tokens, self.top / w if w else None,
                          self.max / w if w else None, self.hits / self.tokens if self.parts else None, examples)


def _batches(n: int, batch_size: int, desc: str) -> Iterator[np.ndarray]:
    """Row indices of validation's batches: 0..n-1 in blocks of `batch_size`."""
    order = np.arange(n)
    for s in tqdm(range(steps_per_epoch(n, batch_size)), desc=desc, leave=False, disable=None):
        yield batch_rows(order, s, batch_size)


@torch.no_grad()
def lm_perplexity(model: TransformerLM, chunks: LMChunks, batch_size: int, eval_memory: str,
                  device: torch.device, desc: str = "lm") -> Perplexity | None:
    """Perplexity of LM chunks under the lm protocol (module docstring); None for an empty split."""
    if len(chunks) == 0:
        return None
    model.eval()
    protocol = LMProtocol(model, eval_memory)
    protocol.start_epoch()
    sums = _Sums()
    for rows in _batches(len(chunks), batch_size, desc):
        batch = {k: v.to(device) for k, v in chunks.batch(rows).items()}
        result = protocol.step(batch, training=False)
        sums.add(result.loss_sum, result.tokens)
    return sums.result()


@torch.no_grad()
def selection_perplexity(model: TransformerLM, examples: SelectionExamples, batch_size: int,
                         mixers: Sequence[str], device: torch.device,
                         desc: str = "selection", eval_memory: str = "on") -> dict[str, Perplexity] | None:
    """Target perplexity per mixer of EVAL_MIXERS under the selection protocol (module docstring);
    None for an empty split."""
    bad = [m for m in mixers if m not in EVAL_MIXERS]
    if bad:
        raise ValueError(f"eval.mixers: {bad} not allowed; allowed: {', '.join(EVAL_MIXERS)}")
    N = model.cfg.memory.num_memories
    if examples.num_slots != N:
        raise DataFormatError(f"{examples.path}: {examples.num_slots} context segments per example but "
                         f"model.memory.num_memories={N}; rerun build_memories with memories.num_memories={N}")
    if len(examples) == 0:
        return None
    model.eval()
    shared = model.cfg.memory.state == "shared"
    sums = {m: _Sums() for m in mixers}
    for rows in _batches(len(examples), batch_size, desc):
        b = {k: v.to(device) for k, v in examples.batch(rows).items()}
        context, target, true_slot = b["context"], b["target"], b["true_slot"]  # [B, N, Ls], [B, T+1], [B]
        bank = model.new_bank(None if shared else len(rows), device)
        if eval_memory == "on":
            model.write_memories(context, bank)  # segment s -> slot s
        inputs, labels = target[:, :-1], target[:, 1:]  # [B, T] each
        scored = b.get("target_mask", torch.ones_like(labels, dtype=torch.bool))  # [B, T]
        for m in mixers:
            out = model(inputs, bank=bank, mixer=None if m == "landmark" else m, oracle_slot=true_slot)
            own = m == "landmark" and model.cfg.memory.landmark not in ("oracle", "uniform", "none")
            ex = per_example(out.logits, labels, scored, out.mix_weights if own else None)
            ex["true_slot"] = true_slot.cpu().numpy()
            sums[m].parts.append(ex)
            sums[m].hits += float((ex["correct"] * ex["tokens"]).sum())
            sums[m].add(float((ex["loss"] * ex["tokens"]).sum()), int(scored.sum()), out.mix_weights, true_slot)
    return {m: s.result() for m, s in sums.items()}


@torch.no_grad()
def plain_context_perplexity(model: TransformerLM, examples: SelectionExamples, batch_size: int,
                             device: torch.device, desc: str = "plain context") -> Perplexity | None:
    """The continuation task's plain-context ceiling: the true slot's segment prepended to the target as
    ordinary context (no memory bank at all), loss on the same target labels. Run on the trained `none`
    variant it shows how much that segment can help a model that reads it directly; None for an empty split."""
    if len(examples) == 0:
        return None
    model.eval()
    sums = _Sums()
    for rows in _batches(len(examples), batch_size, desc):
        b = {k: v.to(device) for k, v in examples.batch(rows).items()}
        context, target, true_slot = b["context"], b["target"], b["true_slot"]  # [B, N, Ls], [B, T+1], [B]
        segment = context[torch.arange(len(rows), device=device), true_slot]  # [B, Ls]
        inputs = torch.cat([segment, target[:, :-1]], dim=1)  # [B, Ls + T]
        logits = model(inputs).logits[:, segment.shape[1]:]  # [B, T]: predictions of the target labels
        labels = target[:, 1:]
        scored = b.get("target_mask", torch.ones_like(labels, dtype=torch.bool))
        ex = per_example(logits, labels, scored, None)
        sums.parts.append(ex)
        sums.hits += float((ex["correct"] * ex["tokens"]).sum())
        sums.add(float((ex["loss"] * ex["tokens"]).sum()), int(scored.sum()))
    return sums.result()

