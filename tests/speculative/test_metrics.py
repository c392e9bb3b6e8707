"""Speculative metrics under vLLM's names: counters, derived figures, per-position acceptance, sums."""

from __future__ import annotations

import pytest

from paperclub.speculative import metrics as m


def test_hand_counted_rounds():
    stats = m.new_counters()
    for accepted in (4, 0, 2, 4):  # four drafts of K=4
        m.count_draft(stats, 4, accepted)
    s = m.summary(stats)
    assert (s["num_drafts"], s["num_draft_tokens"], s["num_accepted_tokens"]) == (4, 16, 10)
    assert s["acceptance_rate"] == 10 / 16
    assert s["mean_acceptance_length"] == 1 + 10 / 4  # tokens per target forward
    assert s["num_accepted_tokens_per_pos"] == [3, 3, 2, 2]
    assert s["acceptance_rate_per_pos"] == [0.75, 0.75, 0.5, 0.5]


def test_totals_add_per_position_lists_of_different_lengths():
    a, b = m.new_counters(), m.new_counters()
    m.count_draft(a, 2, 2)
    m.count_draft(b, 5, 3)
    t = m.total([a, b])
    assert t["num_accepted_tokens_per_pos"] == [2, 2, 1, 0, 0]
    assert m.summary(t)["mean_acceptance_length"] == pytest.approx(1 + 5 / 2)


def test_nothing_drafted_gives_none_not_a_division_by_zero():
    s = m.summary({})
    assert s["acceptance_rate"] is None and s["mean_acceptance_length"] is None and s["num_drafts"] == 0
