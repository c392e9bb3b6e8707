"""Prompt-lookup (n-gram) drafting: propose what followed the last time the context said what it says now.

For each sequence, take its last n tokens (n from `prompt_lookup_max` down to `prompt_lookup_min`), find their
most recent earlier occurrence in prompt + generated tokens, and propose the K tokens that followed it. No model
runs: a proposal costs a few dictionary look-ups. It pays where the output repeats its context (code that edits
the code in the prompt, a rewrite or summary that quotes its source, a model stuck in a loop).

Index. Per sequence and per n, a dict maps each n-gram to the position just after its most recent occurrence
that has a continuation. Each new token adds max - min + 1 entries (O(1) per token, O(context) in all) and a
proposal is max - min + 1 look-ups. The n-gram at the very end of the context has no continuation yet, so it is
indexed only when the next token arrives: a look-up of the suffix therefore finds an *earlier* occurrence.

Continuation. If the match ends at position j (the suffix ends at L = len(context)), the proposal is
context[j], context[j + 1], ... i.e. the context copied with period P = L - j. When fewer than K tokens follow j
(P < K: a short loop), the copy runs on into the proposal itself, so a repeated pattern is proposed for all K
positions instead of being cut short.

Exactness. A proposal is a deterministic function of the context, so its distribution q is one-hot at the proposed
token d. `verify.py`'s rule accepts d with probability min(1, p(d) / q(d)) = p(d), and after a rejection samples
from norm(max(0, p - q)) = p with d removed and renormalised: that is the standard lossless rule with a one-hot
q, so every emitted token is distributed exactly as the target would sample it (and at temperature 0 the rule
is "accept while d equals the target's argmax", token-identical to AR). `NgramProposer` therefore hands
`judge` a one-hot q when some row samples and no q when every row is greedy, like the model draft.

No match. A row whose suffix has no earlier occurrence (for any n >= min) gets no proposal that round: the
decoder verifies just its last token, which is an AR step for that row (`SpeculativeDecoder` samples it from
the target's first position, as SSD does for an undrafted row). With `CombinedProposer` ("ngram+DRAFT") such
rows are drafted by the model draft instead, and matched rows skip the draft model entirely.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paperclub.engine.sequence import Sequence
from paperclub.errors import UserError
from paperclub.speculative.sd import DraftProposer, Proposal, one_hot_q

NGRAM = "ngram"


@dataclass(frozen=True)
class NgramConfig:
    """Prompt-lookup n-gram sizes, tried longest first.

    Defaults 1..3: a 3-token match is specific enough to predict code and quoted text well; going down to 1
    finds a match almost always in a long context. A wrong guess costs little: it only lengthens the target's
    verification forward from 1 to K + 1 positions, which on a memory-bound decode step (CPU, small batch) costs
    a fraction of a second forward, while an unmatched row gets nothing proposed at all."""

    prompt_lookup_min: int = 1
    prompt_lookup_max: int = 3

    def __post_init__(self) -> None:
        if self.prompt_lookup_min < 1:
            raise UserError(f"prompt_lookup_min must be >= 1, got {self.prompt_lookup_min}")
        if self.prompt_lookup_max < self.prompt_lookup_min:
            raise UserError(f"prompt_lookup_max ({self.prompt_lookup_max}) must be >= prompt_lookup_min "
                            f"({self.prompt_lookup_min})")


@dataclass(frozen=True)
class DraftSpec:
    """What `--draft` asked for: the n-gram proposer, a model draft, or both ("ngram+DRAFT")."""

    ngram: bool
    model: str | None  # a draft directory or name; None: none, or the default draft where `default_model`
    default_model: bool = False

    @property
    def uses_model(self) -> bool:
        return self.model is not None or self.default_model


def parse_draft(draft: str | None) -> DraftSpec:
    """"ngram" -> n-gram only; "ngram+DIR" -> n-gram, the model draft DIR where no n-gram matches ("ngram+default":
    the shipped draft); "default" -> the shipped draft alone; anything else is a model draft (a directory named
    ngram or default: write ./ngram, ./default)."""
    if draft is None:
        return DraftSpec(False, None)
    text = str(draft)
    if text == "default":
        return DraftSpec(False, None, True)
    if text == NGRAM:
        return DraftSpec(True, None)
    if text.startswith(NGRAM + "+"):
        rest = text[len(NGRAM) + 1:]
        if not rest:
            raise UserError("--draft ngram+ needs a draft model after the +: ngram+DIR, or ngram+default for the "
                            "shipped draft")
        return DraftSpec(True, None, True) if rest == "default" else DraftSpec(True, rest)
    return DraftSpec(False, text)


@dataclass
class _Context:
    """One sequence's tokens and its n-gram index: index[n - min][gram] = position after its latest occurrence."""

    tokens: list[int]
    index: list[dict[tuple[int, ...], int]] = field(default_factory=list)
    earlier: dict[tuple[int, int], int] = field(default_factory=dict)  # (n, position) -> the occurrence before it


class NgramProposer:
    """The DraftProposer interface over prompt lookup: no model, no cache (see the module docstring)."""

    runner = None  # no draft model: nothing for the engine to free

    def __init__(self, k: int, vocab_size: int, config: NgramConfig | None = None):
        self.k, self.vocab_size = k, vocab_size
        self.config = config or NgramConfig()
        self.contexts: dict[int, _Context] = {}

    # -- the index -----------------------------------------------------------------------------------------------
    def _extend(self, ctx: _Context, new: list[int]) -> None:
        lo, hi = self.config.prompt_lookup_min, self.config.prompt_lookup_max
        tokens = ctx.tokens
        for t in new:
            i = len(tokens)  # t's position: the n-grams ending just before it now have a continuation
            for n in range(lo, min(hi, i) + 1):
                gram = tuple(tokens[i - n:i])
                before = ctx.index[n - lo].get(gram)
                if before is not None:
                    ctx.earlier[(n, i)] = before
                ctx.index[n - lo][gram] = i
            tokens.append(t)

    def sync(self, s: Sequence) -> _Context:
        """The sequence's context with its latest output indexed."""
        ctx = self.contexts[s.request_id]
        have = len(ctx.tokens) - len(s.prompt_ids)
        if have < len(s.output_ids):
            self._extend(ctx, s.output_ids[have:])
        return ctx

    def lookup(self, ctx: _Context) -> list[int] | None:
        """The K tokens that followed the most recent earlier occurrence of the longest matching suffix, or None."""
        found = self.lookup_many(ctx, 1)
        return found[0][1] if found else None

    def lookup_many(self, ctx: _Context, count: int) -> list[tuple[int, list[int]]]:
        """Up to `count` distinct K-token continuations as (match length n, tokens): longest suffix first, and
        for each n its occurrences from the most recent back (the candidates a token tree verifies together)."""
        tokens, lo = ctx.tokens, self.config.prompt_lookup_min
        L = len(tokens)
        out: list[tuple[int, list[int]]] = []
        seen: set[tuple[int, ...]] = set()
        for n in range(min(self.config.prompt_lookup_max, L - 1), lo - 1, -1):
            j = ctx.index[n - lo].get(tuple(tokens[L - n:]))
            while j is not None and len(out) < count:
                cont: list[int] = []
                for i in range(self.k):
                    cont.append(tokens[j + i] if j + i < L else cont[j + i - L])
                if tuple(cont) not in seen:
                    seen.add(tuple(cont))
                    out.append((n, cont))
                j = ctx.earlier.get((n, j))
            if len(out) >= count:
                break
        return out

    # -- the DraftProposer interface -----------------------------------------------------------------------------
    def prefill(self, seqs: list[Sequence]) -> None:
        for s in seqs:
            ctx = _Context([], [{} for _ in range(self.config.prompt_lookup_max - self.config.prompt_lookup_min + 1)])
            self._extend(ctx, s.prompt_ids)
            self.contexts[s.request_id] = ctx

    def reserve(self, capacity: int) -> None:
        pass

    def propose_rows(self, seqs: list[Sequence]) -> list[list[int] | None]:
        return [self.lookup(self.sync(s)) for s in seqs]

    def propose(self, seqs: list[Sequence]) -> Proposal:
        found = self.propose_rows(seqs)
        drafted = [f is not None for f in found]
        tokens = torch.tensor([f if f is not None else [0] * self.k for f in found], dtype=torch.long)
        q = None if all(s.params.greedy for s in seqs) else one_hot_q(tokens, self.vocab_size)
        return Proposal(tokens, q, drafted, ["ngram" if d else "none" for d in drafted])

    def accept(self, seqs: list[Sequence], num_accepted: list[int]) -> None:
        pass  # accepted tokens reach the index through the sequence's output on the next `propose`

    def release(self, seq: Sequence) -> None:
        self.contexts.pop(seq.request_id, None)


class CombinedProposer:
    """N-gram proposals where the context has a match, the model draft's proposals elsewhere ("ngram+DRAFT").

    Rows the n-gram proposer drafts for skip the draft model that round; the draft's cache keeps what it had and
    catches up on the tokens it missed (one ragged chunk) the next time it drafts for the row, as it does for
    the accepted tokens it never saw."""

    def __init__(self, ngram: NgramProposer, model: DraftProposer):
        self.ngram, self.model = ngram, model
        self.runner = model.runner  # the engine frees the draft's cache when idle
        self._by_model: list[bool] = []

    def prefill(self, seqs: list[Sequence]) -> None:
        self.ngram.prefill(seqs)
        self.model.prefill(seqs)

    def reserve(self, capacity: int) -> None:
        self.model.reserve(capacity)

    def propose(self, seqs: list[Sequence]) -> Proposal:
        k, vocab = self.ngram.k, self.ngram.vocab_size
        found = self.ngram.propose_rows(seqs)
        rest = [i for i, f in enumerate(found) if f is None]
        tokens = torch.tensor([f if f is not None else [0] * k for f in found], dtype=torch.long)
        sampled = not all(s.params.greedy for s in seqs)
        q = one_hot_q(tokens, vocab) if sampled else None
        source = ["ngram" if f is not None else "draft" for f in found]
        if rest:
            sub = self.model.propose([seqs[i] for i in rest])
            idx = torch.tensor(rest)
            tokens[idx] = sub.tokens.cpu()
            if q is not None:
                q = q.to(sub.q.device) if sub.q is not None else q
                q[idx.to(q.device)] = sub.q if sub.q is not None else one_hot_q(sub.tokens, vocab).to(q.device)
        self._by_model = [f is None for f in found]
        return Proposal(tokens, q, [True] * len(seqs), source)

    def accept(self, seqs: list[Sequence], num_accepted: list[int]) -> None:
        rows = [i for i, m in enumerate(self._by_model) if m]
        if rows:
            self.model.accept([seqs[i] for i in rows], [num_accepted[i] for i in rows])

    def release(self, seq: Sequence) -> None:
        self.ngram.release(seq)
        self.model.release(seq)
