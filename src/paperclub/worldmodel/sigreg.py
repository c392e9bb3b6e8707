"""SIGReg: Sketched Isotropic Gaussian Regularisation, the one loss term that keeps LeWM from collapsing.

Idea: a batch of embeddings z (N x D) is pushed towards an isotropic standard normal distribution. Testing a
D-dimensional distribution directly is hard, so we sketch it: project the batch on M random unit directions
(fresh every call) and test each 1-D projection against N(0, 1) with the Epps-Pulley statistic. By the
Cramer-Wold theorem, matching every 1-D projection means matching the distribution.

Epps-Pulley statistic of a 1-D sample h_1..h_N against N(0, 1):

    EP = N * integral over t of |phi_N(t) - phi(t)|^2 w(t) dt

    phi_N(t) = (1/N) sum_n exp(i t h_n)     the empirical characteristic function
    phi(t)   = exp(-t^2 / 2)                the characteristic function of N(0, 1)
    w(t)     = exp(-t^2 / 2)                a Gaussian weighting

|phi_N - phi|^2 = (mean cos(t h) - phi(t))^2 + (mean sin(t h))^2 because phi is real. The integrand is even
in t, so we integrate over [0, t_max] with the trapezoidal rule and double it. The statistic is O(1) for a
normal sample and grows like N for a sample that is not (collapsed, shifted, anisotropic), and it is
differentiable in z, so it can be used as a loss. The result is averaged over the M directions.
"""

from __future__ import annotations

import torch


def epps_pulley_weights(
    num_knots: int = 17, t_max: float = 3.0, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadrature grid t on [0, t_max] and weights = trapezoid rule x Gaussian window x 2 (even integrand)."""
    t = torch.linspace(0.0, t_max, num_knots, device=device)
    dt = t_max / (num_knots - 1)
    trapezoid = torch.full((num_knots,), dt, device=device)
    trapezoid[0] = trapezoid[-1] = dt / 2
    weights = 2.0 * trapezoid * torch.exp(-0.5 * t**2)
    return t, weights


def epps_pulley(h: torch.Tensor, num_knots: int = 17, t_max: float = 3.0) -> torch.Tensor:
    """Epps-Pulley statistic of each column of h (N x M) against N(0, 1). Returns a tensor of shape (M,)."""
    n = h.shape[0]
    t, weights = epps_pulley_weights(num_knots, t_max, device=h.device)
    ht = h.unsqueeze(-1) * t  # N x M x K
    ecf_real = torch.cos(ht).mean(dim=0)  # M x K
    ecf_imag = torch.sin(ht).mean(dim=0)
    target = torch.exp(-0.5 * t**2)
    sq_err = (ecf_real - target) ** 2 + ecf_imag**2
    return n * (sq_err * weights).sum(dim=-1)


def random_directions(
    dim: int, num_directions: int, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """M random unit vectors in R^dim, as the columns of a dim x M matrix."""
    gen_device = generator.device if generator is not None else device
    a = torch.randn(dim, num_directions, generator=generator, device=gen_device).to(device)
    return a / a.norm(dim=0, keepdim=True)


def sigreg(
    z: torch.Tensor,
    num_directions: int = 1024,
    num_knots: int = 17,
    t_max: float = 3.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SIGReg loss of a batch of embeddings z (N x D, or ... x D flattened to N x D): the Epps-Pulley
    statistic of z projected on `num_directions` fresh random unit directions, averaged over directions."""
    z = z.reshape(-1, z.shape[-1])
    directions = random_directions(z.shape[-1], num_directions, generator=generator, device=z.device)
    return epps_pulley(z @ directions.to(z.dtype), num_knots=num_knots, t_max=t_max).mean()
