"""Drafting with a feature head (`models.draft_head`, EAGLE-style): K tokens from the target's own hidden states.

The head's cache holds pairs: pair i = (h_i, x_{i+1}), the target's final hidden state at position i and the token
after it; its output at pair i is ĥ_{i+1}, whose logits give x_{i+2}. One SD round for a sequence of M tokens
x_0..x_{M-1} (the target has computed h_0..h_{M-2}; x_{M-1} is its next input):

    1. feed the pairs whose true h the head has not seen (all of them after the prompt; n + 1 after a round that
       accepted n): the last one, (h_{M-2}, x_{M-1}), gives ĥ_{M-1} and d_1 = x_M
    2. feed (ĥ_{M-1}, d_1) -> ĥ_M, d_2; ... K - 1 such steps on the head's own predictions
    3. the target verifies [x_{M-1}, d_1..d_K]; its hidden states at x_{M-1}, d_1..d_n (the accepted ones) are the
       true h for the next round's pairs, which overwrite the cache entries of the predicted ones (a length update).

A prompt served partly from the prefix cache has no hidden states for its cached part: the head's context then
starts where the computed part starts (rope only sees relative positions, so its positions are shifted to 0).
Verification is unchanged, so output stays exact whatever the head predicts.
"""

from __future__ import annotations

import torch

from paperclub.engine.kv_cache import KVCache, causal_meta
from paperclub.engine.runner import length_groups
from paperclub.engine.sequence import Sequence
from paperclub.models.draft_head import DraftHead
from paperclub.speculative.sd import Proposal, draw


class HeadRunner:
    """The head and its KV cache (the engine frees the cache of an idle proposer's `runner`)."""

    def __init__(self, head: DraftHead, max_positions: int):
        self.head, self.max_positions = head, max_positions
        self.device = head.device
        self.cache = KVCache(head.cfg, head.device, head.dtype, max_positions)

    def reserve(self, num_slots: int, capacity: int) -> None:
        self.cache.ensure(num_slots, min(capacity, self.max_positions))

    @torch.inference_mode()
    def append(self, slots: list[int], starts: list[int], features: list[torch.Tensor],
               tokens: list[list[int]]) -> torch.Tensor:
        """Write pairs (features[b][j], tokens[b][j]) after `starts[b]` cached pairs of `slots[b]`; returns each
        row's last predicted hidden state (B, D). Rows of different lengths are packed without padding on the
        compiled CPU kernels, as the target's are (`ModelRunner.append`); elsewhere they run in groups of similar
        length, each padded to its longest row."""
        lengths = [len(t) for t in tokens]
        packed = bool(self.cache.k) and self.head.runs_fused(self.cache.k[0])
        if not packed and len(set(lengths)) > 1:
            groups = length_groups(lengths)
            if len(groups) > 1:
                out = [self.append([slots[i] for i in g], [starts[i] for i in g], [features[i] for i in g],
                                   [tokens[i] for i in g]) for g in groups]
                order = torch.tensor([i for g in groups for i in g], device=self.device)
                return torch.cat(out)[torch.argsort(order)]
        T, D = max(lengths), self.head.cfg.hidden_size
        self.reserve(self.cache.num_slots, max(a + (n if packed else T) for a, n in zip(starts, lengths, strict=True)))
        feats = torch.zeros(len(slots), T, D, dtype=self.head.dtype, device=self.device)
        for b, f in enumerate(features):
            feats[b, : len(f)] = f
        toks = torch.tensor([t + [0] * (T - len(t)) for t in tokens], device=self.device)
        meta, positions = causal_meta(slots, starts, lengths, self.device, self.head.cfg.sliding_window, packed)
        hidden = self.head(feats, toks, positions, self.cache.k, self.cache.v, meta)
        last = torch.tensor(lengths, device=self.device) - 1
        return hidden[torch.arange(len(slots), device=self.device), last]


class HeadProposer:
    """SD's proposer for a feature head. `needs_features`: the decoder hands it the target's hidden states."""

    needs_features = True

    def __init__(self, head: DraftHead, k: int, max_positions: int):
        self.runner, self.k = HeadRunner(head, max_positions), k
        self.slots: dict[int, int] = {}
        self.offset: dict[int, int] = {}  # request id -> absolute position of the head's pair 0
        self.cached: dict[int, int] = {}  # request id -> pairs with true features in the head's cache
        self.pending: dict[int, torch.Tensor] = {}  # request id -> true features not yet fed (n, D)

    def prefill(self, seqs: list[Sequence], hidden: torch.Tensor) -> None:
        """hidden: (B, T, D) the target's prefill states, row b holding its computed prompt tokens."""
        for b, s in enumerate(seqs):
            rid = s.request_id
            self.slots[rid] = self.runner.cache.allocate()
            self.offset[rid] = s.cached_prompt_tokens
            self.cached[rid] = 0
            self.pending[rid] = hidden[b, : len(s.prompt_ids) - s.cached_prompt_tokens].clone()
        self.reserve(max(s.length for s in seqs) + self.k + 1)

    def reserve(self, capacity: int) -> None:
        self.runner.reserve(self.runner.cache.num_slots, capacity)

    def propose(self, seqs: list[Sequence]) -> Proposal:
        greedy = all(s.params.greedy for s in seqs)
        ids = [s.request_id for s in seqs]
        slots = [self.slots[r] for r in ids]
        starts = [self.cached[r] for r in ids]
        feats = [self.pending[r] for r in ids]
        toks = []
        for s, r, f in zip(seqs, ids, feats, strict=True):
            first = self.offset[r] + self.cached[r] + 1  # the token after the first pending feature's position
            toks.append(s.all_ids[first : first + len(f)])
            assert first + len(f) == s.length, "head bookkeeping out of step with the sequence"
        tokens, probs = [], []
        for i in range(self.k):
            h = self.runner.append(slots, starts, feats, toks)
            t = draw(self.runner.head.logits(h), seqs, greedy, probs)
            tokens.append(t)
            if i == self.k - 1:
                break
            starts = [a + len(c) for a, c in zip(starts, toks, strict=True)]
            feats = [x[None] for x in h]
            toks = [[x] for x in t.tolist()]
        for r in ids:
            self.cached[r] += len(self.pending[r])  # true pairs stay; the predicted ones are overwritten next round
            self.pending[r] = self.pending[r][:0]
        return Proposal(torch.stack(tokens, 1), torch.stack(probs, 1) if probs else None, [True] * len(seqs),
                        ["draft"] * len(seqs))

    def accept(self, seqs: list[Sequence], num_accepted: list[int], hidden: torch.Tensor) -> None:
        """hidden: (B, T, D) the target's states over the verified chunk [last token, d_1..d_K]: the first
        n + 1 are true features of the new pairs."""
        for b, (s, n) in enumerate(zip(seqs, num_accepted, strict=True)):
            self.pending[s.request_id] = hidden[b, : n + 1].clone()

    def release(self, seq: Sequence) -> None:
        rid = seq.request_id
        self.runner.cache.release(self.slots.pop(rid))
        for d in (self.offset, self.cached, self.pending):
            del d[rid]
