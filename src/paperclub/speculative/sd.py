"""Synchronous speculative decoding (SD): the draft proposes K tokens, the target verifies them in one forward.

One round for a batch of sequences:
    1. draft:  feed each row's not-yet-cached tokens, then K - 1 single tokens, sampling d_1..d_K from q
    2. target: one forward over [last token, d_1..d_K] (K + 1 positions) gives p_1..p_{K+1}
    3. verify: the lossless rule (`verify.py`) -> n accepted + one correction/bonus token per row
    4. roll both caches back to what was accepted (a length update: the slot cache makes it free)
Rows accept different numbers of tokens; the next round simply feeds each row what its draft cache lacks.

The proposer is pluggable: the draft model (`DraftProposer`), a feature head that reads the target's hidden states
(`head_proposer.HeadProposer`, EAGLE-style; the decoder hands it the states of the prefill and of each verified
chunk), prompt lookup (`ngram.NgramProposer`) or both (`ngram.CombinedProposer`). A proposer may leave a row
undrafted for a round (no n-gram match): that row's target forward is its last token only, and its token is
sampled from the target as in AR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from paperclub.engine.decoder import prefill_sequences
from paperclub.engine.runner import ModelRunner
from paperclub.engine.sampling import filtered_probs, greedy_tokens, next_tokens, record_logprobs, sample
from paperclub.engine.sequence import Sequence
from paperclub.errors import UserError
from paperclub.speculative import metrics as spec_metrics
from paperclub.speculative.tree import compact, tree_meta, verify_greedy_tree
from paperclub.speculative.verify import judge


@dataclass
class Proposal:
    """One round's proposals for a batch: K tokens for every drafted row."""

    tokens: torch.Tensor  # (B, K); an undrafted row's tokens are padding
    q: torch.Tensor | None  # (B, K, V) proposal probabilities; None when every row is greedy
    drafted: list[bool]  # per row: K tokens proposed (True) or none this round
    source: list[str]  # per row: "draft" (model), "ngram" or "none"


def one_hot_q(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, K) deterministic proposals -> their (B, K, V) proposal distribution: one-hot at each token."""
    q = torch.zeros(*tokens.shape, vocab_size, dtype=torch.float32, device=tokens.device)
    return q.scatter_(2, tokens[:, :, None], 1.0)


def draw(logits: torch.Tensor, seqs: list[Sequence], greedy: bool, probs: list[torch.Tensor]) -> torch.Tensor:
    """One draft token per row from the draft's logits (B, V): the argmax when every row is greedy, else a sample
    from each row's filtered distribution q, which is appended to `probs` for verification."""
    if greedy:
        return greedy_tokens(logits)
    q = filtered_probs(logits, [s.params for s in seqs])
    probs.append(q)
    return sample(q, [s.generator for s in seqs])


class Proposer(Protocol):
    runner: ModelRunner | None  # the draft model's runner, if any (the engine frees its cache when idle)

    def prefill(self, seqs: list[Sequence]) -> None: ...

    def reserve(self, capacity: int) -> None: ...

    def propose(self, seqs: list[Sequence]) -> Proposal: ...

    def accept(self, seqs: list[Sequence], num_accepted: list[int]) -> None: ...

    def release(self, seq: Sequence) -> None: ...


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

    def propose(self, seqs: list[Sequence]) -> Proposal:
        """K draft tokens per row (B, K) and, unless every row is greedy, their probabilities q (B, K, V)."""
        greedy = all(s.params.greedy for s in seqs)
        slots = [self.slots[s.request_id] for s in seqs]
        starts = [self.cached[s.request_id] for s in seqs]
        chunks = [s.all_ids[c:] for s, c in zip(seqs, starts, strict=True)]
        tokens, probs = [], []
        for i in range(self.k):
            t = draw(self.runner.append(slots, starts, chunks, True), seqs, greedy, probs)
            tokens.append(t)
            if i == self.k - 1:
                break  # d_K is not fed: it enters the draft cache next round, if it is accepted
            starts = [a + len(c) for a, c in zip(starts, chunks, strict=True)]
            chunks = [[x] for x in t.tolist()]
        for s, a, c in zip(seqs, starts, chunks, strict=True):
            self.cached[s.request_id] = a + len(c)  # now holds d_1..d_{K-1}; `accept` trims the rejected
        return Proposal(torch.stack(tokens, 1), torch.stack(probs, 1) if probs else None, [True] * len(seqs),
                        ["draft"] * len(seqs))

    def accept(self, seqs: list[Sequence], num_accepted: list[int]) -> None:
        """Roll the draft cache back to the accepted prefix: it holds d_1..d_{K-1} at most."""
        for s, n in zip(seqs, num_accepted, strict=True):
            self.cached[s.request_id] -= (self.k - 1) - min(n, self.k - 1)

    def release(self, seq: Sequence) -> None:
        self.runner.cache.release(self.slots.pop(seq.request_id))
        del self.cached[seq.request_id]


class SpeculativeDecoder:
    """SD as an engine decoder: `step` runs one draft-verify round for every running sequence."""

    def __init__(self, target: ModelRunner, draft: ModelRunner | Proposer, k: int = 5):
        """draft: the draft model's runner, or a proposer built for the same k."""
        if k < 1:
            raise ValueError("k must be >= 1")
        self.runner, self.k = target, k
        self.lookahead = k + 1
        self.proposer: Proposer = DraftProposer(draft, k) if isinstance(draft, ModelRunner) else draft
        self.features = getattr(self.proposer, "needs_features", False)  # a feature head reads the target's states
        self.trees = hasattr(self.proposer, "propose_tree")  # greedy batches verify token trees (`tree.py`)
        if self.trees:
            if target.cfg.sliding_window is not None:
                raise UserError("token-tree drafting needs a model without sliding-window attention")
            self.lookahead = 1 + self.proposer.max_nodes()

    def prefill(self, seqs: list[Sequence]) -> list[list[int]]:
        if self.features:
            logits, hidden = prefill_sequences(self.runner, seqs, with_hidden=True)
            self.proposer.prefill(seqs, hidden)
        else:
            logits = prefill_sequences(self.runner, seqs)
            self.proposer.prefill(seqs)
        for s in seqs:
            s.stats.update(spec_metrics.new_counters())
        self.proposer.reserve(self.runner.cache.capacity)
        first = next_tokens(logits, [s.params for s in seqs], [s.generator for s in seqs])
        emitted = [[t] for t in first.tolist()]
        record_logprobs(seqs, logits, emitted)
        return emitted

    def step(self, seqs: list[Sequence]) -> list[list[int]]:
        self.proposer.reserve(self.runner.cache.capacity)  # the target's cache may have grown since prefill
        if self.trees and all(s.params.greedy for s in seqs):
            return self.tree_step(seqs)
        prop = self.proposer.propose(seqs)
        draft_ids = prop.tokens.tolist()
        chunks = [[s.output_ids[-1]] + (d if ok else [])
                  for s, d, ok in zip(seqs, draft_ids, prop.drafted, strict=True)]
        logits = self.runner.append([s.slot for s in seqs], [s.num_cached for s in seqs], chunks, False,
                                    self.features)
        if self.features:
            logits, hidden = logits
        draft, q = prop.tokens.to(logits.device), None if prop.q is None else prop.q.to(logits.device)
        if all(prop.drafted):
            verdict = judge(seqs, draft, q, logits)
            num_accepted, next_token = verdict.num_accepted, verdict.next_token
        else:  # undrafted rows: an AR step from the target's first position (their only one), as in SSD
            num_accepted, next_token = [0] * len(seqs), [0] * len(seqs)
            rows = [i for i, ok in enumerate(prop.drafted) if ok]
            bare = [i for i, ok in enumerate(prop.drafted) if not ok]
            if rows:
                verdict = judge([seqs[i] for i in rows], draft[rows], None if q is None else q[rows],
                                logits[rows, : self.k + 1])
                for i, n, t in zip(rows, verdict.num_accepted, verdict.next_token, strict=True):
                    num_accepted[i], next_token[i] = n, t
            b_seqs = [seqs[i] for i in bare]
            tokens = next_tokens(logits[bare, 0], [s.params for s in b_seqs], [s.generator for s in b_seqs])
            for i, t in zip(bare, tokens.tolist(), strict=True):
                next_token[i] = t
        if self.features:
            self.proposer.accept(seqs, num_accepted, hidden)
        else:
            self.proposer.accept(seqs, num_accepted)
        emitted = []
        for s, d, ok, n, t, src in zip(seqs, draft_ids, prop.drafted, num_accepted, next_token, prop.source,
                                       strict=True):
            s.num_cached += 1 + n  # the last token and the accepted drafts; the rest is rolled back
            spec_metrics.count_draft(s.stats, self.k if ok else 0, n)
            if src == "ngram":
                s.stats[spec_metrics.NGRAM_DRAFTS] = s.stats.get(spec_metrics.NGRAM_DRAFTS, 0) + 1
            emitted.append(d[:n] + [t])
        record_logprobs(seqs, logits, emitted)
        return emitted

    def tree_step(self, seqs: list[Sequence]) -> list[list[int]]:
        """One round with token trees (greedy rows only): every row's guesses verified in one target forward."""
        trees = self.proposer.propose_tree(seqs)
        starts = [s.num_cached for s in seqs]
        tokens, positions, meta = tree_meta(trees, [s.output_ids[-1] for s in seqs], starts,
                                            [s.slot for s in seqs], self.runner.device)
        logits = self.runner.forward_meta(tokens, positions, meta)  # (B, 1 + nodes, V)
        verdict = verify_greedy_tree(trees, logits)
        emitted = verdict.emitted(trees)
        for s, tree, path in zip(seqs, trees, verdict.paths, strict=True):
            compact(self.runner.cache, s.slot, s.num_cached, path)
            s.num_cached += 1 + len(path)
            spec_metrics.count_draft(s.stats, tree.depth, len(path))
            s.stats[spec_metrics.TREE_NODES] = s.stats.get(spec_metrics.TREE_NODES, 0) + len(tree)
            s.stats[spec_metrics.TREE_DRAFT_ROUNDS] = s.stats.get(spec_metrics.TREE_DRAFT_ROUNDS, 0) + tree.drafted
            if path and tree.sources[path[0]] == "ngram":
                s.stats[spec_metrics.NGRAM_DRAFTS] = s.stats.get(spec_metrics.NGRAM_DRAFTS, 0) + 1
        if any(s.params.logprobs is not None for s in seqs):  # the logits along each row's accepted path
            rows = [[0] + [1 + i for i in path] for path in verdict.paths]
            width = max(len(r) for r in rows)
            index = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=logits.device)
            record_logprobs(seqs, logits.gather(1, index[:, :, None].expand(-1, -1, logits.shape[-1])), emitted)
        return emitted

    def release(self, seq: Sequence) -> None:
        self.runner.release(seq.slot, seq.all_ids[: seq.num_cached])
        self.proposer.release(seq)

