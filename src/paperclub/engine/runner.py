"""The model runner: a model, its KV cache, and the one operation every decoding mode is built from —
append tokens to some sequences' caches and return the logits the caller needs."""

from __future__ import annotations

import logging

import torch

from paperclub.engine.cuda_graphs import CudaGraphs, graphs_enabled
from paperclub.engine.kv_cache import KVCache, causal_meta
from paperclub.engine.prefix_cache import PrefixCache
from paperclub.models.llama import AttentionMeta, Llama

log = logging.getLogger(__name__)


def length_groups(lengths: list[int], slack: float = 1.25) -> list[list[int]]:
    """Split rows into groups, longest first, so that padding each group to its longest row costs at most `slack`
    times the real tokens. A batch is padded to its longest row, so 16 prompts of 37-321 tokens padded together
    would run 3.7x the real rows; each group is one forward. With batch-invariant kernels the logits do not depend
    on the grouping. Used on the torch path only: the compiled CPU kernels pack ragged rows without padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    real = 0
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= slack * (real + lengths[i]):
            groups[-1].append(i)
            real += lengths[i]
        else:
            groups.append([i])
            real = lengths[i]
    return groups


class ModelRunner:
    def __init__(self, model: Llama, max_positions: int, cuda_graphs: bool | None = None,
                 prefix_cache_mb: float = 0.0):
        """cuda_graphs: replay decode/verification forwards as CUDA graphs (None: on for CUDA devices unless
        PAPERCLUB_CUDA_GRAPHS=0). prefix_cache_mb: memory for the K/V of earlier prompts and outputs that later
        prompts may start with (`prefix_cache.py`); 0 turns prefix caching off."""
        self.model = model
        self.cfg = model.cfg
        self.device = model.device
        self.max_positions = max_positions
        self.cache = KVCache(self.cfg, self.device, model.dtype, max_positions)
        self.prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 else None
        use = graphs_enabled(self.device) if cuda_graphs is None else cuda_graphs and self.device.type == "cuda"
        self.graphs = CudaGraphs(model, self.cache) if use else None

    def reserve(self, num_slots: int, capacity: int) -> None:
        self.cache.ensure(num_slots, min(capacity, self.max_positions))

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], running: tuple[list[int], list[int], list[list[int]]] = ([], [], []),
                with_hidden: bool = False) -> tuple[list[int], list[int], torch.Tensor]:
        """Give each prompt a cache slot and fill it: the K/V of the prompt's longest cached prefix are copied in
        (with a prefix cache), the rest is computed. Returns the slots, how many tokens of each prompt came from
        the prefix cache, and each prompt's last-token logits (B, V). The cache must have room for the prompts
        (`reserve`). `running`: (slots, starts, chunks) of sequences already in the cache that run in the same
        forward (a decode step); their last-token logits follow the prompts'. `with_hidden`: the logits are
        `(logits, hidden)`, hidden (B, T, D) the final-normed states of every appended token (`append`)."""
        slots = [self.cache.allocate() for _ in prompts]
        pc = self.prefix_cache
        starts = [pc.load(p, self.cache, slot) for p, slot in zip(prompts, slots, strict=True)] if pc else \
            [0] * len(prompts)
        run_slots, run_starts, run_chunks = running
        logits = self.append(slots + run_slots, starts + run_starts,
                             [p[s:] for p, s in zip(prompts, starts, strict=True)] + run_chunks, True, with_hidden)
        if pc:  # at once, so that requests arriving while these run find their prompts
            for p, slot in zip(prompts, slots, strict=True):
                pc.store(p, self.cache, slot)
        return slots, starts, logits

    def release(self, slot: int, tokens: list[int]) -> None:
        """Give a sequence's slot back. `tokens` are those whose K/V the slot holds, from position 0: with a prefix
        cache their full blocks are kept for later prompts (the next turn of a conversation starts with them)."""
        if self.prefix_cache is not None:
            self.prefix_cache.store(tokens, self.cache, slot)
        self.cache.release(slot)

    @torch.inference_mode()
    def append(self, slots: list[int], starts: list[int], chunks: list[list[int]], last_only: bool,
               with_hidden: bool = False):
        """Write `chunks[b]` after `starts[b]` cached tokens of slot `slots[b]`.

        Returns float32 logits: (B, V) for each row's last token if `last_only`, else (B, T, V) with rows
        padded to the longest chunk (positions past a row's chunk are garbage). `with_hidden`: returns
        (logits, hidden), hidden (B, T, D) the final-normed states of every token (a feature draft head reads
        them), in the model's dtype, padded like the logits."""
        lengths = [len(c) for c in chunks]
        if self.graphs is not None and not with_hidden:  # decode and verification replay as CUDA graphs
            try:
                logits = self.graphs.try_run(slots, starts, chunks, last_only)
                if logits is not None:
                    return logits
            except RuntimeError as e:  # the forward re-runs eagerly below (it rewrites the same K/V)
                log.warning("CUDA graphs turned off for this model: capture or replay failed (%s)", e)
                self.graphs = None
        packed = self.packs_ragged_rows()
        if last_only and len(chunks) > 1 and not packed and not with_hidden:
            groups = length_groups(lengths)
            if len(groups) > 1:  # e.g. a batched prefill of prompts of very different lengths
                logits = [self.append([slots[i] for i in g], [starts[i] for i in g], [chunks[i] for i in g], True)
                          for g in groups]
                order = torch.tensor([i for g in groups for i in g], device=self.device)
                return torch.cat(logits)[torch.argsort(order)]
        T = max(lengths)
        meta, positions = causal_meta(slots, starts, lengths, self.device, self.cfg.sliding_window, packed)
        tokens = torch.tensor([c + [0] * (T - len(c)) for c in chunks], device=self.device)
        hidden = self.model(tokens, positions, self.cache.k, self.cache.v, meta)
        states = hidden
        if last_only and min(lengths) == T:  # (a decode step: a view, no gather)
            hidden = hidden[:, -1]
        elif last_only:
            last = torch.tensor(lengths, device=self.device) - 1
            hidden = hidden[torch.arange(len(chunks), device=self.device), last]
        return (self.model.logits(hidden), states) if with_hidden else self.model.logits(hidden)

    def packs_ragged_rows(self) -> bool:
        """Whether forwards run as one compiled call that packs rows of different lengths without padding."""
        return bool(self.cache.k) and self.model.runs_fused(self.cache.k[0])

    @torch.inference_mode()
    def forward_meta(self, tokens: torch.Tensor, positions: torch.Tensor, meta: AttentionMeta) -> torch.Tensor:
        """Raw forward with caller-built metadata (branch decoding). Returns (B, T, V) float32 logits."""
        return self.model.logits(self.model(tokens, positions, self.cache.k, self.cache.v, meta))
