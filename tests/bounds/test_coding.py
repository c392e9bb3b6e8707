"""Range coding of the quantized weights: exact round trips, lengths near the empirical entropy, damage caught."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paperclub.bounds.coding import decode, elias_gamma_bits, empirical_entropy_bits, encode
from paperclub.errors import UserError

CENTRES = np.array([-0.5, -0.1, 0.0, 0.1, 0.5, 1.0, 2.0], dtype=np.float16)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=3000))
def test_round_trip_is_exact(values):
    indices = np.array(values)
    enc = encode(indices, CENTRES)
    back, centres = decode(enc)
    assert np.array_equal(back, indices)
    assert np.array_equal(centres, CENTRES)


def test_the_stream_is_within_a_few_words_of_the_empirical_entropy():
    rng = np.random.default_rng(0)
    indices = rng.choice(7, size=5000, p=[0.02, 0.08, 0.2, 0.4, 0.2, 0.08, 0.02])
    enc = encode(indices, CENTRES)
    entropy = empirical_entropy_bits(indices)
    stream = enc.bits()["stream"]
    # the range coder writes whole 32-bit words and approximates the probabilities: allow two words plus 0.1%
    assert entropy <= stream <= entropy * 1.001 + 64
    assert enc.bits()["total"] == sum(v for k, v in enc.bits().items() if k != "total")


def test_one_level_costs_no_stream():
    enc = encode(np.full(100, 3), CENTRES)
    assert enc.bits()["stream"] == 0
    assert np.array_equal(decode(enc)[0], np.full(100, 3))


def test_elias_gamma_lengths():
    assert [elias_gamma_bits(n) for n in (1, 2, 3, 4, 7, 8, 1000)] == [1, 3, 3, 5, 5, 7, 19]


def test_damaged_counts_are_caught():
    enc = encode(np.array([0, 1, 2, 3, 1, 1]), CENTRES)
    bad = type(enc)(enc.levels, (enc.counts[0] + 1,) + enc.counts[1:], enc.centres_f16, enc.stream)
    with pytest.raises(UserError, match="corrupt"):
        decode(bad)


def test_out_of_range_levels_are_refused():
    with pytest.raises(UserError, match="level indices"):
        encode(np.array([0, 7]), CENTRES)
