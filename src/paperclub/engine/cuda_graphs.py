"""CUDA graphs for the runner's small fixed-shape forwards: decode (1 token per row) and verification (K + 1).

At batch 1 an 8B model's decode step is ~800 kernel launches; launched one by one from Python they take ~16 ms on
an H200, four times the ~4 ms the weights take to stream. A CUDA graph records the launches once and replays them
in one call. A graph fixes every tensor's address and shape, so a captured forward:

* reads tokens, positions and slots from static input buffers, refilled before each replay;
* attends over the whole cache capacity under a mask built inside the graph from the write positions (the
  eager path attends over just the filled prefix: masked keys weigh exactly 0, so the two agree up to
  floating-point reduction order);
* is valid for one (first slot, rows, tokens per row, last-only) and one cache allocation: the rows must be the
  consecutive slots a, a+1, ..., so attention reads a view of the cache (no gather), and a cache that grows
  (`KVCache.generation`) drops every graph.

Anything else (prefill, uneven rows, branch decoding, scattered slots) runs eagerly. `PAPERCLUB_CUDA_GRAPHS=0`
turns graphs off.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from paperclub.engine.kv_cache import KVCache
from paperclub.models.llama import AttentionMeta, Llama

log = logging.getLogger(__name__)


def graphs_enabled(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get("PAPERCLUB_CUDA_GRAPHS", "1") != "0"


def static_forward(model: Llama, cache: KVCache, tokens: torch.Tensor, write: torch.Tensor, first_slot: int,
                   last_only: bool) -> torch.Tensor:
    """Float32 logits of `tokens` (B, T) written at cache positions `write` (B, T) of slots first_slot + b,
    attending over the whole cache capacity: every shape depends on (B, T, capacity) alone, so it can be
    captured. Works on any device (the CPU tests check it against the eager path)."""
    B, T = tokens.shape
    cap = cache.capacity
    j = torch.arange(cap, device=tokens.device)
    mask = j[None, None, :] <= write[:, :, None]  # (B, T, cap)
    if model.cfg.sliding_window is not None:
        mask = mask & (j[None, None, :] > write[:, :, None] - model.cfg.sliding_window)
    slots = torch.arange(first_slot, first_slot + B, device=tokens.device)
    meta = AttentionMeta(slots=slots, write_index=write, kv_len=cap, mask=mask[:, None],
                         slot_range=(first_slot, first_slot + B))
    hidden = model(tokens, write, cache.k, cache.v, meta)
    if last_only:
        hidden = hidden[:, -1]
    return model.logits(hidden)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    tokens: torch.Tensor  # static inputs
    write: torch.Tensor
    out: torch.Tensor  # static output


class CudaGraphs:
    """Captures and replays `static_forward` per shape for one model and its cache."""

    def __init__(self, model: Llama, cache: KVCache, max_rows: int = 32, max_tokens: int = 16,
                 max_graphs: int = 64):
        self.model, self.cache = model, cache
        self.max_rows, self.max_tokens, self.max_graphs = max_rows, max_tokens, max_graphs
        self.graphs: dict[tuple, _Graph] = {}
        self._valid_for: tuple = ()
        self._seen: set[tuple] = set()
        self.captures = self.replays = 0

    def try_run(self, slots: list[int], starts: list[int], chunks: list[list[int]],
                last_only: bool) -> torch.Tensor | None:
        """The logits of this append from a graph (captured now, or replayed), or None when the eager path should
        run it: a shape a graph cannot take, or one seen for the first time (a one-off prefill is not worth a
        capture; decode and verification shapes recur every step)."""
        B, T = len(slots), len(chunks[0])
        if (B > self.max_rows or T > self.max_tokens or any(len(c) != T for c in chunks)
                or slots != list(range(slots[0], slots[0] + B))):
            return None
        key = (slots[0], B, T, last_only)
        if key not in self._seen:
            self._seen.add(key)
            return None
        valid_for = (self.cache.generation, self.model.rope_cos.data_ptr())
        if valid_for != self._valid_for:  # the cache was reallocated or the rope table rebuilt
            self.graphs.clear()
            self._valid_for = valid_for
        tokens = torch.tensor(chunks, dtype=torch.long)
        write = torch.tensor(starts, dtype=torch.long)[:, None] + torch.arange(T)[None, :]
        g = self.graphs.get(key)
        if g is None:
            if len(self.graphs) >= self.max_graphs:
                self.graphs.pop(next(iter(self.graphs)))
            dev = self.cache.device
            return self._capture(key, tokens.to(dev), write.to(dev), slots[0], last_only)
        g.tokens.copy_(tokens, non_blocking=True)
        g.write.copy_(write, non_blocking=True)
        g.graph.replay()
        self.replays += 1
        return g.out.clone()

    def _capture(self, key: tuple, tokens: torch.Tensor, write: torch.Tensor, first_slot: int,
                 last_only: bool) -> torch.Tensor:
        """Run this call's forward for real on a side stream (which also warms up the kernels), then capture the
        same forward; the real run's logits are this call's answer. The capture itself executes nothing, and
        later replays rewrite the same K/V positions only when refilled with new ones."""
        with torch.cuda.device(self.cache.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                answer = static_forward(self.model, self.cache, tokens, write, first_slot, last_only)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = static_forward(self.model, self.cache, tokens, write, first_slot, last_only)
        self.graphs[key] = _Graph(graph, tokens, write, out)
        self.captures += 1
        log.debug("captured a CUDA graph for %s (%d graphs)", key, len(self.graphs))
        return answer
