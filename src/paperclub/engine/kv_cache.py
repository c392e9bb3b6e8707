"""The KV cache: one contiguous slot per sequence, and the attention metadata that addresses it.

Why slots and not pages: on the machines this engine targets first (CPU, small models, tens of sequences)
a per-sequence contiguous slot lets attention read a sequence's keys as one strided view with no gather,
rollback is free (a sequence's length is just an integer the runtime lowers), and branch decoding needs no
copy-on-write: branch tokens are appended after the shared prefix inside the same slot and kept apart by
the attention mask. The price paged caches avoid is fragmentation when lengths vary wildly; we bound it by
growing capacity on demand (`ensure`), rounded to a power of two, instead of reserving the model's maximum.
"""

from __future__ import annotations

import torch

from paperclub.models.config import ModelConfig
from paperclub.models.llama import AttentionMeta


class KVCache:
    def __init__(self, cfg: ModelConfig, device: torch.device | str, dtype: torch.dtype, max_positions: int):
        self.cfg, self.device, self.dtype = cfg, torch.device(device), dtype
        self.max_positions = max_positions
        self.num_slots, self.capacity = 0, 0
        self.generation = 0  # bumped whenever the tensors are reallocated (CUDA graphs hold their addresses)
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self._free: list[int] = []

    def ensure(self, num_slots: int, capacity: int) -> None:
        """Make room for `num_slots` slots of `capacity` positions each, keeping what is cached."""
        if capacity > self.max_positions:
            raise ValueError(f"capacity {capacity} exceeds the model's {self.max_positions} positions")
        if num_slots <= self.num_slots and capacity <= self.capacity:
            return
        new_slots = max(num_slots, self.num_slots)
        new_cap = min(max(capacity, self.capacity, 64), self.max_positions)
        new_cap = min(1 << (new_cap - 1).bit_length(), self.max_positions)
        shape = (new_slots, self.cfg.num_kv_heads, new_cap, self.cfg.head_dim)

        def grow(old: torch.Tensor | None) -> torch.Tensor:
            # zeros, not empty: masked-out entries are multiplied by 0 and must never hold NaN
            new = torch.zeros(shape, device=self.device, dtype=self.dtype)
            if old is not None:
                new[: old.shape[0], :, : old.shape[2]] = old
            return new

        layers = range(self.cfg.num_layers)
        self.k = [grow(self.k[i] if self.k else None) for i in layers]
        self.v = [grow(self.v[i] if self.v else None) for i in layers]
        self._free += list(range(self.num_slots, new_slots))
        self.num_slots, self.capacity = new_slots, new_cap
        self.generation += 1

    def allocate(self) -> int:
        if not self._free:
            self.ensure(max(2 * self.num_slots, 1), self.capacity)
        return self._free.pop(0)

    def release(self, slot: int) -> None:
        self._free.append(slot)
        self._free.sort()

    def reset(self) -> bool:
        """Give the memory back when no slot is in use (an idle server); the next `ensure` allocates anew.
        Returns whether it did."""
        if not self.k or len(self._free) != self.num_slots:
            return False
        self.k, self.v, self._free = [], [], []
        self.num_slots, self.capacity = 0, 0
        self.generation += 1
        return True

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


def slot_range(slots: list[int]) -> tuple[int, int] | None:
    """(a, b) when the slots are exactly a, a+1, ..., b-1: attention can then read a view instead of a gather."""
    a = slots[0]
    return (a, a + len(slots)) if slots == list(range(a, a + len(slots))) else None


def causal_meta(
    slots: list[int], starts: list[int], lengths: list[int], device, window: int | None = None,
    packed: bool = False,
) -> tuple[AttentionMeta, torch.Tensor]:
    """Metadata for appending `lengths[b]` tokens to row b after its `starts[b]` cached ones (padded to T).
    `packed`: the padding will not be computed (the compiled CPU kernels), so the keys span only the real tokens
    (a prompt of 300 tokens beside a decode row 400 tokens in must not ask for 700 positions).

    Returns (meta, positions). Rows of different lengths set `meta.lengths`: the compiled CPU kernels then pack the
    real tokens and never compute the padding. On torch's path the padding tokens of short rows are computed and
    written after the row's real tokens (harmless: they are overwritten before anything attends to them), and they
    attend causally so they never produce NaN.
    """
    B, T = len(slots), max(lengths)
    start = torch.tensor(starts, device=device)
    write = start[:, None] if T == 1 else start[:, None] + torch.arange(T, device=device)[None, :]  # (B, T)
    S = int(max(s + (n if packed else T) for s, n in zip(starts, lengths, strict=True)))
    if B == 1 and T == 1 and (window is None or S <= window):
        mask = None  # one new token attends to everything before it: S = start + 1
    else:
        j = torch.arange(S, device=device)[None, None, :]
        mask = j <= write[:, :, None]  # (B, T, S)
        if window is not None:
            mask &= j > write[:, :, None] - window
        mask = mask[:, None]  # (B, 1, T, S)
    meta = AttentionMeta(
        slots=torch.tensor(slots, device=device), write_index=write, kv_len=S, mask=mask, slot_range=slot_range(slots),
        lengths=None if min(lengths) == T else list(lengths),
    )
    return meta, write
