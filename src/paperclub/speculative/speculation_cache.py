"""The speculation cache: what the draft prepared for every verification outcome it bet on.

Keyed by (sequence, accepted count k, bonus token): the target's outcome of a round is exactly such a pair,
so a lookup either returns the K draft tokens (and their draft distributions, when sampling) that the draft
already decoded on that branch, or misses. Entries of a sequence live for one round: they are dropped as soon
as the sequence's outcome is served, whatever it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Speculation:
    tokens: list[int]  # K draft tokens following the bonus token
    q: torch.Tensor | None  # (K, V) draft distributions they were sampled from; None when greedy


class SpeculationCache:
    def __init__(self) -> None:
        self._entries: dict[int, dict[tuple[int, int], Speculation]] = {}
        self.hits = 0
        self.misses = 0

    def put(self, seq_id: int, k: int, bonus: int, spec: Speculation) -> None:
        self._entries.setdefault(seq_id, {})[(k, bonus)] = spec

    def take(self, seq_id: int, k: int, bonus: int) -> Speculation | None:
        """The speculation for this outcome, or None; either way the sequence's other entries are dropped."""
        spec = self._entries.pop(seq_id, {}).get((k, bonus))
        if spec is None:
            self.misses += 1
        else:
            self.hits += 1
        return spec

    def drop(self, seq_id: int) -> None:
        self._entries.pop(seq_id, None)

    def outcomes(self, seq_id: int) -> list[tuple[int, int]]:
        """The (k, bonus) pairs cached for a sequence."""
        return list(self._entries.get(seq_id, {}))

    def __len__(self) -> int:
        return sum(len(e) for e in self._entries.values())

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0
