"""Token-tree proposals: several prompt-lookup matches and the draft's chains from its top-w first tokens.

Each round, for a greedy batch, every row gets a `TokenTree` (`tree.py`) made of

    * up to `ngram_candidates` distinct continuations found by prompt lookup (`NgramProposer.lookup_many`: the
      longest matching suffix first, then earlier occurrences and shorter suffixes), free to make;
    * the draft model's greedy chain of `draft_depth` (<= K) tokens from each of its `draft_width` most likely
      first tokens, all branches decoded together in `draft_depth` forwards (the first over the tokens the draft
      has not seen, then the others over w rows in the row's own cache slot, kept apart by a tree mask, as the SSD
      draft worker decodes its branches). The draft runs only when the longest n-gram match is shorter than
      `draft_below_match`.

With `ngram_alone_at`, a match that long is verified alone, as a chain (fewer rows and no draft forwards where
prompt lookup's guess is usually right); measured at 3 on the per-category prompts it trades acceptance for speed
(2.95 tokens per forward and 1.38x AR against 3.02 and 1.32x; BENCHMARKS.md), so it is off by default.

The default shape (3 n-gram guesses of K tokens, the draft's top 4 first tokens with 3 tokens each, the draft
only below a 3-token match) was chosen by simulating greedy rounds exactly on the per-category evaluation
prompts against the measured cost of a verification forward by its rows (BENCHMARKS.md): past 16 rows the
target's step costs a second row tile, and the draft's 4th and 5th tokens are rarely accepted while each costs
a draft forward.

Why these guesses: measured on the per-category evaluation prompts (BENCHMARKS.md), a wrong first token is where
most of the draft's rounds end, and the target's token is often the draft's second to fourth choice; and prompt
lookup's best match is often not its most recent one.

After a tree round the draft keeps only what it had before the branches (the tokens it caught up on): the
accepted path and the target's next token reach it as the next round's catch-up chunk. Sampled batches use the
chain proposer (`CombinedProposer` or one of its parts): tree acceptance here is greedy only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from paperclub.engine.kv_cache import slot_range
from paperclub.engine.sampling import greedy_tokens
from paperclub.engine.sequence import Sequence
from paperclub.errors import UserError
from paperclub.models.llama import AttentionMeta
from paperclub.speculative.ngram import CombinedProposer, NgramProposer
from paperclub.speculative.sd import DraftProposer, Proposal
from paperclub.speculative.tree import TokenTree, build_tree

MAX_TREE_DEPTH = 32  # = attention_amx.cpp's kWindow: deeper trees could round differently from their path decoded


@dataclass(frozen=True)
class TreeConfig:
    """The shape of a token tree: how many n-gram guesses, how many first tokens of the draft to branch on."""

    ngram_candidates: int = 3
    draft_width: int = 4
    draft_depth: int | None = 3  # tokens per draft branch (None: K); n-gram guesses are K long, being free
    draft_below_match: int = 3  # run the draft when the longest n-gram match is shorter (above n's max: always)
    ngram_alone_at: int | None = None  # a match this long is verified alone, as a chain (None: never)

    def __post_init__(self) -> None:
        if self.ngram_candidates < 0 or self.draft_width < 0:
            raise UserError("tree sizes must be >= 0: ngram_candidates "
                            f"{self.ngram_candidates}, draft_width {self.draft_width}")
        if self.ngram_candidates + self.draft_width < 1:
            raise UserError("a token tree needs at least one n-gram candidate or one draft branch")
        if self.draft_depth is not None and self.draft_depth < 1:
            raise UserError(f"draft_depth must be >= 1, got {self.draft_depth}")
        if self.ngram_alone_at is not None and self.ngram_alone_at < 1:
            raise UserError(f"ngram_alone_at must be >= 1 (or None), got {self.ngram_alone_at}")

    def depth(self, k: int) -> int:
        return k if self.draft_depth is None else min(k, self.draft_depth)

    def max_nodes(self, k: int) -> int:
        return k * self.ngram_candidates + self.depth(k) * self.draft_width


def draft_branches(dp: DraftProposer, seqs: list[Sequence], width: int, k: int) -> list[list[list[int]]]:
    """The draft's greedy k-token chains from its top-`width` first tokens: (B, width, k) as lists.

    One forward feeds each row what the draft has not seen yet (its cache catches up to the sequence) and gives
    the first-token logits; k - 1 more forwards decode the width branches of every row together. Afterwards the
    draft's cache holds the caught-up sequence and nothing of the branches."""
    runner = dp.runner
    slots = [dp.slots[s.request_id] for s in seqs]
    starts = [dp.cached[s.request_id] for s in seqs]
    chunks = [s.all_ids[c:] for s, c in zip(seqs, starts, strict=True)]
    base = [a + len(c) for a, c in zip(starts, chunks, strict=True)]  # index (and position) of the first guess
    runner.reserve(runner.cache.num_slots, max(base) + (k - 1) * width + 1)
    logits = runner.append(slots, starts, chunks, True)  # (B, V)
    for s, b in zip(seqs, base, strict=True):
        dp.cached[s.request_id] = b
    tokens = logits.topk(width, dim=-1).indices  # (B, w)
    steps = [tokens]
    if k > 1:
        B, dev = len(seqs), runner.device
        base_t = torch.tensor(base, device=dev)
        S_max = max(base) + (k - 1) * width
        mask = (torch.arange(S_max, device=dev)[None, None, :] < base_t[:, None, None]).repeat(1, width, 1)
        # (B, w, S_max): the prefix, for now
        col = torch.arange(width, device=dev)
        meta_slots = torch.tensor(slots, device=dev)
        for j in range(k - 1):
            write = base_t[:, None] + j * width + col[None, :]  # (B, w): branch c's token at depth j + 1
            mask.scatter_(2, write[:, :, None], True)  # each branch sees the prefix, its own tokens and itself
            S = max(base) + (j + 1) * width
            meta = AttentionMeta(slots=meta_slots, write_index=write, kv_len=S, mask=mask[:, None, :, :S],
                                 slot_range=slot_range(slots))
            positions = (base_t + j)[:, None].expand(B, width)
            out = runner.forward_meta(tokens, positions, meta)  # (B, w, V)
            tokens = greedy_tokens(out.reshape(B * width, -1)).view(B, width)
            steps.append(tokens)
    return torch.stack(steps, 2).tolist()


class TreeProposer:
    """Token trees for greedy batches (`propose_tree`), chain proposals for sampled ones (`propose`)."""

    needs_features = False

    def __init__(self, k: int, ngram: NgramProposer | None, model: DraftProposer | None,
                 config: TreeConfig | None = None):
        if k > MAX_TREE_DEPTH:
            raise UserError(f"token trees verify at most {MAX_TREE_DEPTH} tokens deep, got K = {k}: the CPU "
                            "attention keeps a node's last 32 keys in float32, which is what makes a tree's "
                            "verification round exactly like decoding its path")
        self.k, self.config = k, config or TreeConfig()
        if ngram is None and self.config.ngram_candidates:
            self.config = replace(self.config, ngram_candidates=0)
        if model is None and self.config.draft_width:
            self.config = replace(self.config, draft_width=0)
        self.ngram, self.model = ngram, model
        self.runner = model.runner if model is not None else None
        if ngram is not None and model is not None:
            self.chain = CombinedProposer(ngram, model)
        else:
            self.chain = ngram if ngram is not None else model

    def max_nodes(self) -> int:
        return self.config.max_nodes(self.k)

    def prefill(self, seqs: list[Sequence]) -> None:
        self.chain.prefill(seqs)

    def reserve(self, capacity: int) -> None:
        if self.model is not None:
            self.model.reserve(capacity + self.config.depth(self.k) * max(self.config.draft_width, 1) + 1)

    def propose(self, seqs: list[Sequence]) -> Proposal:
        return self.chain.propose(seqs)

    def accept(self, seqs: list[Sequence], num_accepted: list[int]) -> None:
        self.chain.accept(seqs, num_accepted)

    def release(self, seq: Sequence) -> None:
        self.chain.release(seq)

    def propose_tree(self, seqs: list[Sequence]) -> list[TokenTree]:
        cfg = self.config
        guesses: list[list[tuple[list[int], str]]] = [[] for _ in seqs]
        longest = [0] * len(seqs)
        if self.ngram is not None and cfg.ngram_candidates:
            for i, s in enumerate(seqs):
                found = self.ngram.lookup_many(self.ngram.sync(s), cfg.ngram_candidates)
                longest[i] = max((n for n, _ in found), default=0)
                if cfg.ngram_alone_at is not None and longest[i] >= cfg.ngram_alone_at:
                    found = found[:1]  # a long match is usually right: its chain alone, 6 rows, no draft
                    longest[i] = -1
                guesses[i] += [(cont, "ngram") for _, cont in found]
        rows = []
        if self.model is not None and cfg.draft_width:
            rows = [i for i, n in enumerate(longest) if 0 <= n < cfg.draft_below_match]
            if rows:
                chains = draft_branches(self.model, [seqs[i] for i in rows], cfg.draft_width, cfg.depth(self.k))
                for i, branch in zip(rows, chains, strict=True):
                    guesses[i] += [(c, "draft") for c in branch]
        trees = [build_tree(g) for g in guesses]
        for i in rows:
            trees[i].drafted = True
        return trees
