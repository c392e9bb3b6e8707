"""Synchronous speculative decoding (SD): the draft proposes K tokens, the target verifies them in one forward.

One round for a batch of sequences:
    1. draft:  feed each row's not-yet-cached tokens, then K - 1 single tokens, sampling d_1..d_K from q
    2. target: one forward over [last token, d_1..d_K] (K + 1 positions) gives p_1..p_{K+1}
    3. verify: the lossless rule (`verify.py`) -> n accepted + one correction/bonus token per row
    4. roll both caches back to what was accepted (a length update: the slot cache makes it free)
Rows accept different numbers of tokens; the next round simply feeds each row what its draft cache lacks.
"""

from __future__ import annotations

import torch

from paperclub.engine.runner import ModelRunner
from paperclub.engine.sampling import filtered_probs, greedy_tokens, next_tokens, record_logprobs, sample
from paperclub.engine.sequence import Sequence
from paperclub.speculative import metrics as spec_metrics
from paperclub.speculative.verify import judge


class DraftProposer:
    """The draft side: its own runner and cache; proposes K tokens (and their q) for a batch of sequences."""

    def __init__(self, runner: ModelRunner, k: int):
        self.runner, self.k = runner, k
        self.cached: dict[int, int] = {}  # request id -> tokens in the draft's cache
        self.slots: dict[int, int] = {}

    def prefill(self, seqs: list[Sequence]) -> None:
        for s in seqs:
            self.slots[s.request_id] = self.runner.cache.allocate()
        self.runner.reserve(self.runner.cache.num_slots, max(s.length for s in seqs) + self.k + 1)
        self.runner.append([self.slots[s.request_id] for s in seqs], [0] * len(seqs),
                           [s.prompt_ids for s in seqs], True)
        for s in seqs:
            self.cached[s.request_id] = len(s.prompt_ids)

    def reserve(self, capacity: int) -> None:
        self.runner.reserve(self.runner.cache.num_slots, capacity)

    def propose(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """K draft tokens per row (B, K) and, unless every row is greedy, their probabilities q (B, K, V)."""
        params = [s.params for s in seqs]
        greedy = all(p.greedy for p in params)
        slots = [self.slots[s.request_id] for s in seqs]
        starts = [self.cached[s.request_id] for s in seqs]
        chunks = [s.all_ids[c:] for s, c in zip(seqs, starts, strict=True)]
        tokens, probs = [], []
        for i in range(self.k):
            logits = self.runner.append(slots, starts, chunks, True)
            if greedy:
                t = greedy_tokens(logits)
            else:
                q = filtered_probs(logits, params)
                t = sample(q, [s.generator for s in seqs])
                probs.append(q)
            tokens.append(t)
            if i == self.k - 1:
                break  # d_K is not fed: it enters the draft cache next round, if it is accepted
            starts = [a + len(c) for a, c in zip(starts, chunks, strict=True)]
            chunks = [[x] for x in t.tolist()]
        for s, a, c in zip(seqs, starts, chunks, strict=True):
            self.cached[s.request_id] = a + len(c)  # now holds d_1..d_{K-1}; `accept` trims the rejected
        return torch.stack(tokens, 1), (torch.stack(probs, 1) if probs else None)

    def accept(self, seqs: list[Sequence], num_accepted: list[int]) -> None:
        """Roll the draft cache back to the accepted prefix: it holds d_1..d_{K-1} at most."""
        for s, n in zip(seqs, num_accepted, strict=True):
            self.cached[s.request_id] -= (self.k - 1) - min(n, self.k - 1)

    def release(self, seq: Sequence) -> None:
        self.runner.cache.release(self.slots.pop(seq.request_id))
        del self.cached[seq.request_id]


class SpeculativeDecoder:
    """SD as an engine decoder: `step` runs one draft-verify round for every running sequence."""

    def __init__(self, target: ModelRunner, draft: ModelRunner, k: int = 5):
        if k < 1:
            raise ValueError("k must be >= 1")
        self.runner, self.k = target, k
        self.lookahead = k + 1
        self.proposer = DraftProposer(draft, k)

    def prefill(self, seqs: list[Sequence]) -> list[list[int]]:
        for s in seqs:
            s.slot = self.runner.cache.allocate()
            s.stats.update(spec_metrics.new_counters())
        logits = self.runner.append([s.slot for s in seqs], [0] * len(seqs), [s.prompt_ids for s in seqs], True)
        for s in seqs:
            s.num_cached = len(s.prompt_ids)
        self.proposer.prefill(seqs)
        self.proposer.reserve(self.runner.cache.capacity)
        first = next_tokens(logits, [s.params for s in seqs], [s.generator for s in seqs])
        emitted = [[t] for t in first.tolist()]
        record_logprobs(seqs, logits, emitted)
        return emitted

    def step(self, seqs: list[Sequence]) -> list[list[int]]:
        self.proposer.reserve(self.runner.cache.capacity)  # the target's cache may have grown since prefill
        draft, q = self.proposer.propose(seqs)
        chunks = [[s.output_ids[-1]] + d for s, d in zip(seqs, draft.tolist(), strict=True)]
        logits = self.runner.append([s.slot for s in seqs], [s.num_cached for s in seqs], chunks, False)
        verdict = judge(seqs, draft, q, logits)
        self.proposer.accept(seqs, verdict.num_accepted)
        for s, n in zip(seqs, verdict.num_accepted, strict=True):
            s.num_cached += 1 + n  # the last token and the accepted drafts; the rest is rolled back
            spec_metrics.count_draft(s.stats, self.k, n)
        emitted = verdict.emitted(draft.tolist())
        record_logprobs(seqs, logits, emitted)
        return emitted

    def release(self, seq: Sequence) -> None:
        self.runner.cache.release(seq.slot)
        self.proposer.release(seq)

