"""Training protocols: how a batch becomes a loss, and what memory state lives between batches.

lm (v1, faithful)
    chunks [B, L] -> input chunks[:, :-1], labels chunks[:, 1:] (255-token inputs for 256-token chunks).
    One bank shared by the batch (`model.new_bank(None)`), written round-robin by `update_memory=True`
    on every training batch after the read, detached, carried across batches and reset at the start of
    every epoch. Validation resets the bank; eval_memory "off" (v1) then reads with update_memory=False,
    i.e. from an EMPTY bank, so the landmark never acts on the reported loss; eval_memory "on" writes
    each validation batch as training does, so batch k reads what batches k-N..k-1 wrote.
    A model without a memory layer (the pretrain base) runs with bank=None.
selection (v2)
    context [B, N, Ls], target [B, T+1], true_slot [B] (+ target_mask [B, T] for the recall task). A fresh
    bank per batch (state reset per example); context[:, s] is written to slot s (detached or
    differentiable, train.write_grad), then logits = model(target[:, :-1]), loss on the labels
    target[:, 1:] that target_mask marks (all without a mask). Landmark "oracle" gets oracle_slot=true_slot.
    Validation is the same computation without gradients, and also counts the scored labels predicted
    right (stat "acc": recall value accuracy, or next-token accuracy of the continuation task).
    eval_memory "off" (v1's validation, kept for the ablation) skips the writes at validation: the
    target reads an EMPTY bank, so no mixer can use the context. state "shared" (v1) gives the batch
    one bank: every example's segment s lands in the same slot s (mean over the batch).

Both return the token-loss SUM and the token count, so that a mean over a global batch split across
data-parallel ranks is sum_over_ranks(loss_sum) / global_tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from multimem.model.memory_bank import MemoryBank
from multimem.model.transformer import LMOutput, TransformerLM
from multimem.params import UserError

PROTOCOLS = ("lm", "selection")
IGNORE = -100  # label of an unscored position (F.cross_entropy's default ignore_index)
EVAL_MEMORY = ("off", "on")
WRITE_GRAD = ("detached", "differentiable")


class ProtocolError(UserError, ValueError):
    """A protocol setting that the model or the data cannot support."""


@dataclass
class StepResult:
    """One batch: loss_sum (scalar, in the graph when training), tokens, diagnostic (sum, count) pairs."""

    loss_sum: torch.Tensor
    tokens: int
    stats: dict[str, tuple[float, float]] = field(default_factory=dict)


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ cross-entropy over tokens; logits [B, S, V] (any float dtype), labels [B, S] -> float32 scalar."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")


def loss_sum(out: LMOutput, labels: torch.Tensor) -> torch.Tensor:
    """Σ cross-entropy of a forward pass: the model's chunked loss when it was given labels (training:
    no [B, S, V] logits kept for backward), else from the logits (validation)."""
    return out.loss_sum if out.loss_sum is not None else token_loss_sum(out.logits, labels)


def memory_stats(out: LMOutput, true_slot: torch.Tensor | None = None) -> dict[str, tuple[float, float]]:
    """Memory diagnostics as (sum, count):
    mix_max   mean over [B, H, S] of the largest mixing weight (1/N uniform .. 1 one-hot);
    top_true  fraction of tokens whose head-averaged top memory is the true slot (selection only);
    gate      mean over heads of sigmoid(γ_h), the share of the memory readout."""
    stats: dict[str, tuple[float, float]] = {}
    with torch.no_grad():
        if out.mix_weights is not None:
            w = out.mix_weights.float()  # [B, H, S, N]
            stats["mix_max"] = (w.max(-1).values.sum().item(), float(w[..., 0].numel()))
            if true_slot is not None:
                top = w.mean(1).argmax(-1)  # [B, S]
                hit = top == true_slot.to(top.device)[:, None]
                stats["top_true"] = (hit.sum().item(), float(hit.numel()))
        if out.gate is not None:
            stats["gate"] = (out.gate.float().mean().item(), 1.0)
    return stats


class LMProtocol:
    """v1's language-modelling protocol with a shared, carried, round-robin memory bank."""

    name = "lm"

    def __init__(self, model: TransformerLM, eval_memory: str = "off") -> None:
        if eval_memory not in EVAL_MEMORY:
            raise ProtocolError(f"train.eval_memory={eval_memory!r}; allowed: {', '.join(EVAL_MEMORY)}")
        if model.memory_layer is not None and model.cfg.memory.state != "shared":
            raise ProtocolError(
                f"train.protocol='lm' needs model.memory.state='shared' (one bank carried across batches); "
                f"got {model.cfg.memory.state!r}"
            )
        if model.memory_layer is not None and model.cfg.memory.landmark == "oracle":
            raise ProtocolError("landmark 'oracle' needs a true slot: use train.protocol='selection'")
        self.model, self.eval_memory = model, eval_memory
        self.bank = self._new_bank()

    def _new_bank(self) -> MemoryBank | None:
        """An empty bank shared by the batch, on the model's current device (None without a memory layer)."""
        return None if self.model.memory_layer is None else self.model.new_bank(None)

    def start_epoch(self) -> None:
        """Empty the bank (start of every epoch and of every validation pass)."""
        self.bank = self._new_bank()

    def step(self, batch: dict[str, torch.Tensor], training: bool) -> StepResult:
        chunks = batch["chunks"]  # [B, L]
        inputs, labels = chunks[:, :-1], chunks[:, 1:]  # [B, L-1] each
        write = self.bank is not None and (training or self.eval_memory == "on")
        out = self.model(inputs, bank=self.bank, update_memory=write, labels=labels if training else None)
        if self.bank is not None:
            self.bank.detach()
        return StepResult(loss_sum(out, labels), labels.numel(), memory_stats(out))

    def state_dict(self) -> dict[str, Any]:
        return {} if self.bank is None else {"bank": self.bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bank = self._new_bank()
        if self.bank is not None:
            self.bank.load_state_dict(state["bank"])


class SelectionProtocol:
    """v2's selection-critical task: N context segments written to N slots, then the target."""

    name = "selection"

    def __init__(self, model: TransformerLM, write_grad: str = "differentiable", eval_memory: str = "on") -> None:
        if write_grad not in WRITE_GRAD:
            raise ProtocolError(f"train.write_grad={write_grad!r}; allowed: {', '.join(WRITE_GRAD)}")
        if eval_memory not in EVAL_MEMORY:
            raise ProtocolError(f"train.eval_memory={eval_memory!r}; allowed: {', '.join(EVAL_MEMORY)}")
        if model.memory_layer is None:
            raise ProtocolError("train.protocol='selection' needs a model with a memory layer")
        self.model, self.detach, self.eval_memory = model, write_grad == "detached", eval_memory
        self.shared = model.cfg.memory.state == "shared"

    def start_epoch(self) -> None:
        """Nothing carries across batches."""

    def step(self, batch: dict[str, torch.Tensor], training: bool, mixer: str | None = None) -> StepResult:
        context, target, true_slot = batch["context"], batch["target"], batch["true_slot"]
        B, N, _ = context.shape  # [B, N, Ls]
        if N != self.model.cfg.memory.num_memories:
            raise ProtocolError(
                f"selection data has {N} context segments per example but model.memory.num_memories="
                f"{self.model.cfg.memory.num_memories}"
            )
        bank = self.model.new_bank(None if self.shared else B)
        if training or self.eval_memory == "on":
            self.model.write_memories(context, bank, detach=self.detach)  # segment s -> slot s
        inputs, labels = target[:, :-1], target[:, 1:]  # [B, T] each
        scored = batch.get("target_mask")  # [B, T] bool (recall: the value tokens); None = every token
        if scored is not None:
            labels = labels.masked_fill(~scored, IGNORE)  # cross-entropy skips IGNORE labels
        out = self.model(inputs, bank=bank, mixer=mixer, oracle_slot=true_slot,
                         labels=labels if training else None)
        stats = memory_stats(out, true_slot)
        n = int((labels != IGNORE).sum())
        if out.logits is not None:  # validation: accuracy of the scored tokens (recall: value accuracy)
            hit = (out.logits.argmax(-1) == labels) & (labels != IGNORE)
            stats["acc"] = (float(hit.sum()), float(n))
        return StepResult(loss_sum(out, labels), n, stats)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Stateless between batches."""


def make_protocol(
    name: str, model: TransformerLM, eval_memory: str = "off", write_grad: str = "detached"
) -> LMProtocol | SelectionProtocol:
    if name == "lm":
        return LMProtocol(model, eval_memory)
    if name == "selection":
        return SelectionProtocol(model, write_grad, eval_memory)
    raise ProtocolError(f"train.protocol={name!r}; allowed: {', '.join(PROTOCOLS)}")
