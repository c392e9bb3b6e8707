"""The DDIM sampler against a 1-D Gaussian mixture whose exact noise predictor is known in closed form."""

import pytest
import torch
from scipy import stats

from paperclub.dmpc.diffusion import Diffusion, make_scheduler

WEIGHTS, MEANS, STDS = torch.tensor([0.3, 0.7]), torch.tensor([-2.0, 1.5]), torch.tensor([0.3, 0.5])


class ExactMixtureDenoiser(torch.nn.Module):
    """eps*(x_t, t) = -sqrt(1 - abar_t) * d/dx log p_t(x_t), with p_t the mixture noised to step t:
    components N(sqrt(abar) mu_i, abar sigma_i^2 + 1 - abar)."""

    def __init__(self, alphas_cumprod):
        super().__init__()
        self.abar = alphas_cumprod

    def forward(self, x, t):
        a = self.abar[t].view(-1, 1, 1)
        mean, var = a.sqrt() * MEANS, a * STDS**2 + 1 - a
        resp = torch.softmax(torch.log(WEIGHTS) - 0.5 * torch.log(var) - 0.5 * (x - mean) ** 2 / var, dim=-1)
        score = (resp * (mean - x) / var).sum(-1, keepdim=True)
        return -(1 - a).sqrt() * score


def mixture_cdf(x):
    return (WEIGHTS * torch.distributions.Normal(MEANS, STDS).cdf(torch.as_tensor(x)[:, None])).sum(-1).numpy()


def test_ddim_reproduces_a_gaussian_mixture():
    diffusion = Diffusion(ExactMixtureDenoiser(make_scheduler().alphas_cumprod))
    x = diffusion.sample((20_000, 1, 1), steps=100, generator=torch.Generator().manual_seed(0)).flatten()
    left = x < 0
    # tolerances: 20k samples give a KS statistic under 0.0096 (95%) for the exact law; 100 DDIM steps add
    # about as much discretization error
    assert stats.kstest(x.numpy(), mixture_cdf).statistic < 0.015
    assert left.float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert x[left].mean().item() == pytest.approx(-2.0, abs=0.03)
    assert x[~left].mean().item() == pytest.approx(1.5, abs=0.03)
    assert x[left].std().item() == pytest.approx(0.3, abs=0.03)
    assert x[~left].std().item() == pytest.approx(0.5, abs=0.03)


def test_ddim_is_deterministic_given_the_noise_and_batches_conditions():
    class Shift(torch.nn.Module):  # noise predictor of data concentrated at the condition c: eps = (x - sqrt(a) c)/..
        def __init__(self, abar):
            super().__init__()
            self.abar = abar

        def forward(self, x, t, c):
            a = self.abar[t].view(-1, 1, 1)
            return (x - a.sqrt() * c) / (1 - a).sqrt()

    diffusion = Diffusion(Shift(make_scheduler().alphas_cumprod))
    c = torch.tensor([-3.0, 0.0, 4.0]).view(3, 1, 1)
    x = diffusion.sample((3, 1, 1), c, steps=10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(x, c, atol=1e-3, rtol=0)


def test_loss_is_small_for_the_exact_denoiser_and_large_for_a_wrong_one():
    torch.manual_seed(0)
    abar = make_scheduler().alphas_cumprod
    idx = torch.multinomial(WEIGHTS, 4096, replacement=True)
    x0 = (MEANS[idx] + STDS[idx] * torch.randn(4096)).view(-1, 1, 1)
    exact = Diffusion(ExactMixtureDenoiser(abar)).loss(x0)

    class Zero(torch.nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x)

    zero = Diffusion(Zero()).loss(x0)
    assert zero.item() == pytest.approx(1.0, abs=0.05)  # E[eps^2]
    assert exact.item() < 0.5 * zero.item()
