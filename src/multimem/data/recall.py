"""Slot-MQAR: a recall task in which the memory decides the answer (after Zoology's multi-query associative
recall, Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models").

Each example has N memory slots; slot s holds P key→value pairs, `k1 v1 k2 v2 … kP vP` (preceded by the cue
token of its domain under `keys: shared_cue`). The target starts with a start token (and, under shared_cue,
the true slot's cue), then asks every key of the TRUE slot once, in a new order, each followed by its value:

    context[s] = [cue_d(s)]  k_1 v_1 … k_P v_P                    [N, Ls],  Ls = 2P (+1 with a cue)
    target     = start [cue_d(true)] k_π1 v_π1 … k_πP v_πP         [T+1],    T = 2P (+1 with a cue)
    scored     = the positions whose label is a value token        [T] bool, P of them

Keys are distinct across the slots of an example, so each queried key occurs once in the true slot and in
no other; values are drawn uniformly (with repetition) from the value set, so without memory the best
prediction of a value is a guess: chance accuracy 1/num_values, chance loss ln(num_values) nats. A value
never occurs in the target before its key is asked.

How a slot can be recognised (`keys`), the experimental factor:
    per_slot    each domain d (slot assignment shuffled per example) draws its keys from its own key set
                (num_keys / num_domains keys): a landmark can route by the content of what was written;
    shared_cue  every slot draws from one shared key set; only the cue token written with the slot and
                repeated at the start of the target tells the true slot apart.

Token ids (all < vocab): start = 1, cues 2 … 2+D−1, keys next (num_keys), values next (num_values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from multimem.data.errors import DataError

KEY_MODES = ("per_slot", "shared_cue")
START = 1


@dataclass(frozen=True)
class RecallSpec:
    num_memories: int  # N slots per example
    pairs: int  # P key→value pairs per slot
    keys: str  # per_slot | shared_cue
    num_keys: int
    num_values: int
    num_domains: int  # D >= N domains (slot identities), N of them per example

    @classmethod
    def from_params(cls, memories: dict[str, Any]) -> "RecallSpec":
        r = memories["recall"]
        return cls(int(memories["num_memories"]), int(r["pairs"]), r["keys"], int(r["num_keys"]),
                   int(r["num_values"]), int(r["num_domains"]))

    @property
    def cue(self) -> int:
        return 1 if self.keys == "shared_cue" else 0

    @property
    def segment_len(self) -> int:
        return 2 * self.pairs + self.cue

    @property
    def target_len(self) -> int:
        return 2 * self.pairs + self.cue

    @property
    def key_base(self) -> int:
        return START + 1 + self.num_domains

    @property
    def value_base(self) -> int:
        return self.key_base + self.num_keys

    @property
    def vocab_needed(self) -> int:
        return self.value_base + self.num_values

    @property
    def chance_accuracy(self) -> float:
        return 1.0 / self.num_values

    @property
    def chance_loss(self) -> float:
        return float(np.log(self.num_values))

    def problems(self, vocab_size: int) -> list[str]:
        """Why this spec cannot be built (empty when it can), naming the parameters."""
        out = []
        if self.keys not in KEY_MODES:
            out.append(f"memories.recall.keys: {self.keys!r}; allowed: {', '.join(KEY_MODES)}")
        if self.num_domains < self.num_memories:
            out.append(f"memories.recall.num_domains: {self.num_domains} < memories.num_memories "
                       f"({self.num_memories}); allowed: >= num_memories")
        per_domain = self.num_keys // self.num_domains if self.keys == "per_slot" else self.num_keys
        need = self.pairs if self.keys == "per_slot" else self.pairs * self.num_memories
        if per_domain < need:
            where = "per domain (num_keys / num_domains)" if self.keys == "per_slot" else "shared"
            out.append(f"memories.recall.num_keys: {self.num_keys} gives {per_domain} keys {where}, fewer than "
                       f"the {need} distinct keys an example needs; allowed: >= {need * (self.num_domains if self.keys == 'per_slot' else 1)}")
        if self.vocab_needed > vocab_size:
            out.append(f"model.vocab_size: {vocab_size} < {self.vocab_needed} token ids the recall task uses "
                       f"(2 + num_domains + num_keys + num_values); raise model.vocab_size or lower the recall sizes")
        return out


def recall_examples(spec: RecallSpec, n_examples: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`n_examples` slot-MQAR examples (module docstring).

    Returns context int16 [E, N, Ls], target int16 [E, T+1], target_mask bool [E, T] (label scored),
    true_slot int64 [E], slot_domain int16 [E, N]."""
    E, N, P, D = n_examples, spec.num_memories, spec.pairs, spec.num_domains
    c = spec.cue
    slot_domain = np.argsort(rng.random((E, D)), axis=1)[:, :N]  # [E, N] N distinct domains, shuffled
    if spec.keys == "per_slot":
        per = spec.num_keys // D
        # P distinct keys of each slot's domain: rank random numbers within the domain's key block
        pick = np.argsort(rng.random((E, N, per)), axis=2)[:, :, :P]  # [E, N, P]
        keys = spec.key_base + slot_domain[:, :, None] * per + pick
    else:
        pick = np.argsort(rng.random((E, spec.num_keys)), axis=1)[:, :N * P]  # [E, N·P] distinct
        keys = spec.key_base + pick.reshape(E, N, P)
    values = spec.value_base + rng.integers(spec.num_values, size=(E, N, P))  # [E, N, P]
    context = np.zeros((E, N, spec.segment_len), dtype=np.int64)
    if c:
        context[:, :, 0] = START + 1 + slot_domain
    context[:, :, c::2] = keys
    context[:, :, c + 1::2] = values
    true_slot = rng.integers(N, size=E)  # [E]
    rows = np.arange(E)
    order = np.argsort(rng.random((E, P)), axis=1)  # [E, P] the order keys are asked in
    tk = np.take_along_axis(keys[rows, true_slot], order, axis=1)  # [E, P]
    tv = np.take_along_axis(values[rows, true_slot], order, axis=1)
    target = np.zeros((E, spec.target_len + 1), dtype=np.int64)
    target[:, 0] = START
    if c:
        target[:, 1] = START + 1 + slot_domain[rows, true_slot]
    target[:, 1 + c::2] = tk
    target[:, 2 + c::2] = tv
    labels = target[:, 1:]
    mask = labels >= spec.value_base  # [E, T] the value positions
    dtype = np.int16 if spec.vocab_needed < 2**15 else np.int32
    return {"context": context.astype(dtype), "target": target.astype(dtype), "target_mask": mask,
            "true_slot": true_slot.astype(np.int64), "slot_domain": slot_domain.astype(np.int16)}


def check_buildable(spec: RecallSpec, vocab_size: int) -> None:
    problems = spec.problems(vocab_size)
    if problems:
        raise DataError("; ".join(problems))
