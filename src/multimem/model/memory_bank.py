"""MemoryBank: N compressive memories held as batched tensors (no Python loop over memories).

Einsum letters: b batch, n memory slot, h head, s position, d key dim, e value dim, c key-buffer slot.
A leading batch dimension `*` is () for a bank shared by the batch (v1) or (B,) per example (v2).

    M         [*, N, H, d, e]   Σ φ(k) vᵀ of everything written to slot n       (Infini-attention eq. 4)
    z         [*, N, H, d]      Σ φ(k)                                          (normaliser)
    key_sum   [*, N, H, d]      Σ k, raw keys (for the hsa_mean landmark)
    tokens    [*, N]            tokens written (0 = empty memory)
    keys      [*, N, H, C, d]   most recent raw keys (for the hsa_encoder landmark), `key_len` valid
    key_len   [*, N]
    pointer   int               round-robin write slot (v1: advances once per forward call)

Tensors are replaced, never modified in place, so a write can stay in the autograd graph
(differentiable writes) or be detached (v1).
"""

from __future__ import annotations

from typing import Any

import torch

_TENSORS = ("M", "z", "key_sum", "tokens", "keys", "key_len")


class MemoryBank:
    """State of a MultiMemoryLayer; created by `TransformerLM.new_bank`."""

    def __init__(
        self,
        num_memories: int,
        heads: int,
        head_dim: int,
        batch_size: int | None = None,
        key_capacity: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.num_memories, self.heads, self.head_dim = num_memories, heads, head_dim
        self.batch_size, self.key_capacity = batch_size, key_capacity
        self.device, self.dtype = torch.device(device or "cpu"), dtype
        self.reset()

    @property
    def lead(self) -> tuple[int, ...]:
        return () if self.batch_size is None else (self.batch_size,)

    def reset(self) -> None:
        """Empty every memory (M = 0, z = 0) and rewind the round-robin pointer."""
        N, H, d, C = self.num_memories, self.heads, self.head_dim, self.key_capacity
        f = dict(device=self.device, dtype=self.dtype)
        self.M = torch.zeros(*self.lead, N, H, d, d, **f)
        self.z = torch.zeros(*self.lead, N, H, d, **f)
        self.key_sum = torch.zeros(*self.lead, N, H, d, **f)
        self.tokens = torch.zeros(*self.lead, N, **f)
        self.keys = torch.zeros(*self.lead, N, H, C, d, **f)
        self.key_len = torch.zeros(*self.lead, N, dtype=torch.long, device=self.device)
        self.pointer = 0

    @property
    def empty(self) -> torch.Tensor:
        """[*, N] bool: slots nothing was written to."""
        return self.tokens == 0

    def slot_mask(self, slot: int | torch.Tensor) -> torch.Tensor:
        """One-hot [*, N] for an int slot, or [B, N] for per-example slots [B]."""
        N = self.num_memories
        if isinstance(slot, int):
            if not 0 <= slot < N:
                raise ValueError(f"memory slot {slot} out of range 0..{N - 1}")
            oh = torch.zeros(N, device=self.device, dtype=self.dtype)
            oh[slot] = 1.0
            return oh.expand(*self.lead, N)
        if self.batch_size is None:
            raise ValueError("per-example slots need a per-example bank (model.memory.state: per_example)")
        if slot.shape != (self.batch_size,) or slot.min() < 0 or slot.max() >= N:
            raise ValueError(f"slots must be a LongTensor [{self.batch_size}] in 0..{N - 1}")
        return torch.nn.functional.one_hot(slot.to(self.device), N).to(self.dtype)

    def select(self, tensor: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Pick slot rows of `tensor` [*, N, ...] with `onehot` [*, N] -> [*, ...]."""
        shape = onehot.shape + (1,) * (tensor.dim() - onehot.dim())
        return (tensor * onehot.view(shape)).sum(onehot.dim() - 1)

    def add(
        self,
        onehot: torch.Tensor | None,
        dM: torch.Tensor,
        dz: torch.Tensor,
        dkey_sum: torch.Tensor,
        tokens: float,
        keys: torch.Tensor | None = None,
        replace_keys: bool = False,
    ) -> None:
        """Accumulate one write into the slots picked by `onehot` [*, N]:
        dM [*, H, d, e], dz / dkey_sum [*, H, d], keys [*, H, L, d] (raw keys of this write).
        With onehot None every slot is written at once: dM [*, N, H, d, e], dz [*, N, H, d],
        keys [*, N, H, L, d].
        """
        def spread(x: torch.Tensor) -> torch.Tensor:  # [*, ...] -> [*, N, ...] on the chosen slot
            if onehot is None:
                return x
            shape = onehot.shape + (1,) * (x.dim() - len(self.lead))
            return onehot.view(shape) * x.unsqueeze(len(self.lead))

        self.M = self.M + spread(dM.to(self.dtype))
        self.z = self.z + spread(dz.to(self.dtype))
        self.key_sum = self.key_sum + spread(dkey_sum.to(self.dtype))
        self.tokens = self.tokens + (tokens if onehot is None else onehot * tokens)
        if keys is not None and self.key_capacity:
            self._add_keys(onehot, keys.to(self.dtype), replace_keys)

    def _add_keys(self, onehot: torch.Tensor | None, keys: torch.Tensor, replace: bool) -> None:
        C = self.key_capacity
        L = keys.shape[-2]
        n = len(self.lead)
        if onehot is None:  # keys [*, N, H, L, d]: one segment per slot
            hit = torch.ones_like(self.key_len, dtype=torch.bool)
            keys = keys.unsqueeze(n)  # [*, 1, N, H, L, d] -> indexed below as per slot
        else:
            hit = onehot.bool()  # [*, N]
        if replace:  # v1: the landmark sees only the last write
            old = torch.zeros_like(self.keys)
            old_len = torch.zeros_like(self.key_len)
        else:
            old, old_len = self.keys, self.key_len
        # append: concatenate along the buffer axis, keep the most recent C valid keys
        new = keys.squeeze(n) if onehot is None else keys.unsqueeze(n).expand(
            *self.lead, self.num_memories, *keys.shape[n:])  # [*, N, H, L, d]
        cat = torch.cat([old, new], dim=-2)  # [*, N, H, C+L, d]; valid: [0, old_len) and [C, C+L)
        total = old_len + L
        keep = torch.clamp(total, max=C)  # new valid length
        # index of the j-th kept key in `cat`: positions of valid keys are [0..old_len) ++ [C..C+L)
        j = torch.arange(C, device=self.device)
        start = total - keep  # first kept valid key (in the virtual concatenated order)
        virt = start.unsqueeze(-1) + j  # [*, N, C]
        src = torch.where(virt < old_len.unsqueeze(-1), virt, virt - old_len.unsqueeze(-1) + C)
        src = src.clamp(max=C + L - 1)
        idx = src.unsqueeze(-2).unsqueeze(-1).expand(*src.shape[:-1], self.heads, C, self.head_dim)
        gathered = torch.gather(cat, -2, idx)  # [*, N, H, C, d]
        valid = (j < keep.unsqueeze(-1)).unsqueeze(-2).unsqueeze(-1)
        gathered = gathered * valid
        h = hit.view(*hit.shape, 1, 1, 1)
        self.keys = torch.where(h, gathered, self.keys)
        self.key_len = torch.where(hit, keep, self.key_len)

    def repeat(self, batch_size: int) -> "MemoryBank":
        """A per-example bank of `batch_size` copies of this bank (shared, or per-example with B=1)."""
        if self.batch_size not in (None, 1):
            raise ValueError(f"repeat needs a shared bank or batch size 1, not {self.batch_size}")
        out = MemoryBank(self.num_memories, self.heads, self.head_dim, batch_size, self.key_capacity,
                         self.device, self.dtype)
        for name in _TENSORS:
            t = getattr(self, name)
            t = t if self.batch_size is None else t[0]
            setattr(out, name, t.unsqueeze(0).expand(batch_size, *t.shape))
        out.pointer = self.pointer
        return out

    def detach(self) -> None:
        """Cut the autograd graph of every state tensor."""
        for name in _TENSORS:
            setattr(self, name, getattr(self, name).detach())

    def state_dict(self) -> dict[str, Any]:
        sd: dict[str, Any] = {name: getattr(self, name).detach().clone() for name in _TENSORS}
        sd["pointer"] = torch.tensor(self.pointer)
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        for name in _TENSORS:
            cur = getattr(self, name)
            if sd[name].shape != cur.shape:
                raise ValueError(f"memory bank tensor {name}: shape {tuple(sd[name].shape)}, expected {tuple(cur.shape)}")
            setattr(self, name, sd[name].to(device=cur.device, dtype=cur.dtype).clone())
        self.pointer = int(sd["pointer"])
