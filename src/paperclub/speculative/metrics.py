"""Speculative decoding's counters and the figures derived from them, under the names vLLM uses, so that a
figure means the same in `paperclub bench` JSON, a request's metrics, the server's `/metrics` and BENCHMARKS.md.

Counters (summed over sequences and rounds; one "draft" is one sequence's proposal in one round):
    num_drafts                   rounds x sequences that were drafted for
    num_draft_tokens             draft tokens proposed
    num_accepted_tokens          draft tokens the target accepted
    num_accepted_tokens_per_pos  [i]: drafts whose token at position i was accepted (acceptance is a prefix, so
                                 it never rises with i)
Derived:
    acceptance_rate              num_accepted_tokens / num_draft_tokens
    mean_acceptance_length       1 + num_accepted_tokens / num_drafts: tokens emitted per target forward (the
                                 accepted drafts plus the target's own token)
    acceptance_rate_per_pos      [i]: num_accepted_tokens_per_pos[i] / num_drafts
With token trees (`speculative.tree`) a draft's tokens are its tree's depth (the longest guess) and two more
figures appear: num_tree_nodes (nodes verified, summed), num_tree_draft_rounds (rounds in which the draft model
ran; the others had n-gram guesses only) and mean_tree_nodes = num_tree_nodes / num_drafts. With prompt lookup
(`speculative.ngram`), num_ngram_drafts counts the drafts it made (with a draft model beside it, the rest are the
model's; with trees, the rounds whose accepted path began with an n-gram guess).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

COUNTERS = ("num_drafts", "num_draft_tokens", "num_accepted_tokens")
PER_POS = "num_accepted_tokens_per_pos"
TREE_NODES = "num_tree_nodes"  # only where token trees ran
TREE_DRAFT_ROUNDS = "num_tree_draft_rounds"
TREE_COUNTERS = (TREE_NODES, TREE_DRAFT_ROUNDS)
NGRAM_DRAFTS = "num_ngram_drafts"  # only where prompt lookup ran
OPTIONAL_COUNTERS = (*TREE_COUNTERS, NGRAM_DRAFTS)


def new_counters() -> dict[str, Any]:
    return dict.fromkeys(COUNTERS, 0) | {PER_POS: []}


def count_draft(stats: dict[str, Any], drafted: int, accepted: int) -> None:
    """Add one draft of `drafted` tokens of which the first `accepted` were accepted."""
    add(stats, {"num_drafts": 1, "num_draft_tokens": drafted, "num_accepted_tokens": accepted,
                PER_POS: [1] * accepted + [0] * (drafted - accepted)})


def add(totals: dict[str, Any], stats: Mapping[str, Any]) -> dict[str, Any]:
    """Sum `stats`' counters into `totals` (per-position lists element by element); returns `totals`."""
    for key in COUNTERS:
        totals[key] = totals.get(key, 0) + stats.get(key, 0)
    for key in OPTIONAL_COUNTERS:
        if key in stats:
            totals[key] = totals.get(key, 0) + stats[key]
    theirs, ours = list(stats.get(PER_POS, [])), totals.setdefault(PER_POS, [])
    ours.extend([0] * (len(theirs) - len(ours)))
    for i, v in enumerate(theirs):
        ours[i] += v
    return totals


def summary(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The counters and the derived figures; the derived ones are None where nothing was drafted."""
    drafts, drafted = stats.get("num_drafts", 0), stats.get("num_draft_tokens", 0)
    accepted, per_pos = stats.get("num_accepted_tokens", 0), list(stats.get(PER_POS, []))
    trees = {}
    if TREE_NODES in stats:
        trees = {key: stats.get(key, 0) for key in TREE_COUNTERS}
        trees["mean_tree_nodes"] = stats[TREE_NODES] / drafts if drafts else None
    if NGRAM_DRAFTS in stats:
        trees[NGRAM_DRAFTS] = stats[NGRAM_DRAFTS]
    return trees | {
        "num_drafts": drafts,
        "num_draft_tokens": drafted,
        "num_accepted_tokens": accepted,
        PER_POS: per_pos,
        "acceptance_rate": accepted / drafted if drafted else None,
        "mean_acceptance_length": 1 + accepted / drafts if drafts else None,
        "acceptance_rate_per_pos": [v / drafts for v in per_pos] if drafts else None,
    }


def total(many: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    out = new_counters()
    for stats in many:
        add(out, stats)
    return out
