"""The three bounds against hand-computed values, their invariants, and their errors on bad input."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paperclub.bounds.bounds import CATONI_GRID, catoni, certify, kl_bernoulli, kl_inverse, mcallester, occam
from paperclub.errors import UserError


def test_occam_at_zero_training_error_has_a_closed_form():
    # kl(0 || p) = -ln(1 - p), so the bound is 1 - exp(-(bits ln 2 + ln(1/delta)) / n)
    bits, n, delta = 1000, 60000, 0.05
    expected = 1 - math.exp(-(bits * math.log(2) + math.log(1 / delta)) / n)
    assert occam(0.0, bits, n, delta) == pytest.approx(expected, abs=1e-10)


def test_occam_matches_a_hand_computed_kl_inverse():
    # kl(0.1 || 0.2) = 0.1 ln 0.5 + 0.9 ln(0.9/0.8) = 0.036684...; so a budget of exactly that inverts to 0.2
    budget = 0.1 * math.log(0.5) + 0.9 * math.log(0.9 / 0.8)
    assert kl_inverse(0.1, budget) == pytest.approx(0.2, abs=1e-9)
    n, delta = 10_000, 0.05
    bits = (budget * n - math.log(1 / delta)) / math.log(2)
    assert occam(0.1, bits, n, delta) == pytest.approx(0.2, abs=1e-9)


def test_mcallester_is_its_formula():
    # 0.1 + sqrt((500 + ln(2 sqrt(10000) / 0.05)) / 20000) = 0.1 + sqrt((500 + ln 4000) / 20000)
    assert mcallester(0.1, 500.0, 10_000, 0.05) == pytest.approx(0.1 + math.sqrt((500 + math.log(4000)) / 20000))


def test_catoni_pays_for_its_grid():
    n, kl, delta = 10_000, 300.0, 0.05
    value, c = catoni(0.05, kl, n, delta)
    budget = (kl + math.log(len(CATONI_GRID) / delta)) / n
    assert value == pytest.approx((1 - math.exp(-c * 0.05 - budget)) / (1 - math.exp(-c)))
    one_point, _ = catoni(0.05, kl, n, delta, grid=(c,))  # the same C alone pays nothing for a grid
    assert one_point < value
    assert value == min((1 - math.exp(-g * 0.05 - budget)) / (1 - math.exp(-g)) for g in CATONI_GRID)


def test_certify_splits_delta_over_the_three_bounds():
    cert = certify(0.1, 2000, 60000, 0.05)
    assert cert.occam == pytest.approx(occam(0.1, 2000, 60000, 0.05 / 3))
    assert cert.bound_error == min(cert.occam, cert.mcallester, cert.catoni)
    assert cert.bound == "occam"  # the kl form is the tightest of the three at this small error


@settings(max_examples=200, deadline=None)
@given(e=st.floats(0, 1), bits=st.floats(0, 1e6), n=st.integers(1, 10**7), delta=st.floats(1e-6, 0.999))
def test_no_bound_falls_below_the_training_error(e, bits, n, delta):
    cert = certify(e, bits, n, delta)
    for value in (cert.occam, cert.mcallester, cert.catoni):
        assert e - 1e-9 <= value <= 1.0
    # sound side of the inversion: the reported p is at or beyond the kl budget, never inside it
    budget = (bits * math.log(2) + math.log(3 / delta)) / n
    assert cert.occam == 1.0 or kl_bernoulli(e, cert.occam) >= budget - 1e-12


def test_more_bits_never_tighten_the_bound():
    values = [certify(0.1, bits, 60000).bound_error for bits in (0, 1000, 10_000, 100_000)]
    assert values == sorted(values) and values[-1] > values[0]


@pytest.mark.parametrize("delta", [0.0, 1.0, -0.1, 1.5])
def test_delta_outside_the_open_unit_interval_is_refused(delta):
    with pytest.raises(UserError, match="delta"):
        certify(0.1, 100, 1000, delta)


def test_other_bad_inputs_are_refused():
    with pytest.raises(UserError, match="training error"):
        certify(1.5, 100, 1000)
    with pytest.raises(UserError, match="at least one"):
        certify(0.1, 100, 0)
    with pytest.raises(UserError, match="description length"):
        certify(0.1, -1, 1000)
