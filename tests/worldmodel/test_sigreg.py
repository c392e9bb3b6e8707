import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paperclub.worldmodel.sigreg import epps_pulley, epps_pulley_weights, random_directions, sigreg


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_near_zero_for_standard_normal_and_large_for_collapsed():
    z = torch.randn(1024, 32, generator=gen(1))
    normal = sigreg(z, 256, generator=gen(2)).item()
    collapsed = sigreg(torch.zeros(1024, 32) + 0.3, 256, generator=gen(2)).item()
    assert normal < 1.0
    assert collapsed > 100 * normal


def test_large_for_anisotropic_and_for_low_rank():
    g = gen(1)
    z = torch.randn(1024, 32, generator=g)
    scales = torch.ones(32)
    scales[:16] = 0.05  # half the dimensions squashed
    low_rank = torch.randn(1024, 2, generator=g) @ torch.randn(2, 32, generator=g) / math.sqrt(2)
    normal = sigreg(z, 256, generator=gen(2)).item()
    assert sigreg(z * scales, 256, generator=gen(2)).item() > 20 * normal
    assert sigreg(low_rank, 256, generator=gen(2)).item() > 20 * normal
    assert sigreg(z * 3.0, 256, generator=gen(2)).item() > 20 * normal  # wrong scale
    assert sigreg(z + 2.0, 256, generator=gen(2)).item() > 20 * normal  # wrong mean


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_invariant_to_sample_order(seed):
    z = torch.randn(64, 8, generator=gen(seed)) * 1.5
    perm = torch.randperm(64, generator=gen(seed + 1))
    a = sigreg(z, 32, generator=gen(7))
    b = sigreg(z[perm], 32, generator=gen(7))
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_epps_pulley_matches_numerical_integral_for_a_point_mass():
    # all samples at 0: ECF = 1, so EP = N * int_R (1 - exp(-t^2/2))^2 exp(-t^2/2) dt (over [-3, 3])
    n = 10
    t = np.linspace(-3, 3, 20001)
    expected = n * np.trapezoid((1 - np.exp(-(t**2) / 2)) ** 2 * np.exp(-(t**2) / 2), t)
    got = epps_pulley(torch.zeros(n, 1), num_knots=257).item()
    assert abs(got - expected) / expected < 1e-3


def test_weights_integrate_the_gaussian_window_and_directions_are_unit():
    """The weights are the trapezoid rule (dt = 3/16, halved at both ends) times exp(-t^2/2), doubled for the
    mirrored half-line: they sum to the integral of exp(-t^2/2) over [-3, 3], sqrt(2 pi) erf(3 / sqrt(2))."""
    t, w = epps_pulley_weights(17, 3.0)
    dt = 3.0 / 16
    assert t[0] == 0 and abs(t[-1] - 3.0) < 1e-6
    assert w[0].item() == pytest.approx(dt) and w[1].item() == pytest.approx(2 * dt * math.exp(-(dt**2) / 2))
    assert w.sum().item() == pytest.approx(math.sqrt(2 * math.pi) * math.erf(3 / math.sqrt(2)), rel=1e-3)
    d = random_directions(16, 100, generator=gen(0))
    assert torch.allclose(d.norm(dim=0), torch.ones(100), atol=1e-5)


def test_gradient_pushes_collapsed_batch_apart():
    z = (0.01 * torch.randn(256, 8, generator=gen(0))).requires_grad_()
    opt = torch.optim.Adam([z], lr=0.02)
    before = sigreg(z, 64, generator=gen(1)).item()
    for i in range(50):
        loss = sigreg(z, 64, generator=gen(i))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert sigreg(z, 64, generator=gen(1)).item() < 0.5 * before
    assert z.std().item() > 0.05
