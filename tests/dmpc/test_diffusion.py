"""The DDIM sampler against a 1-D Gaussian mixture whose exact noise predictor is known in closed form."""

import pytest
import torch
from scipy import stats

from paperclub.dmpc.diffusion import PREDICTIONS, Diffusion, make_scheduler

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


class AsTarget(torch.nn.Module):
    """An exact noise predictor's output re-expressed as x0 ("sample") or velocity ("v_prediction")."""

    def __init__(self, eps_model, abar, prediction):
        super().__init__()
        self.eps_model, self.abar, self.prediction = eps_model, abar, prediction

    def forward(self, x, t, *cond):
        eps = self.eps_model(x, t, *cond)
        if self.prediction == "epsilon":
            return eps
        a = self.abar[t].view(-1, *([1] * (x.dim() - 1)))
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return x0 if self.prediction == "sample" else a.sqrt() * eps - (1 - a).sqrt() * x0


def mixture_cdf(x):
    return (WEIGHTS * torch.distributions.Normal(MEANS, STDS).cdf(torch.as_tensor(x)[:, None])).sum(-1).numpy()


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_reproduces_a_gaussian_mixture(prediction):
    abar = make_scheduler().alphas_cumprod
    diffusion = Diffusion(AsTarget(ExactMixtureDenoiser(abar), abar, prediction), prediction=prediction)
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


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_is_deterministic_given_the_noise_and_batches_conditions(prediction):
    class Shift(torch.nn.Module):  # noise predictor of data concentrated at the condition c: eps = (x - sqrt(a) c)/..
        def __init__(self, abar):
            super().__init__()
            self.abar = abar

        def forward(self, x, t, c):
            a = self.abar[t].view(-1, 1, 1)
            return (x - a.sqrt() * c) / (1 - a).sqrt()

    abar = make_scheduler().alphas_cumprod
    diffusion = Diffusion(AsTarget(Shift(abar), abar, prediction), prediction=prediction)
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


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_the_loss_is_zero_for_the_exact_predictor_of_each_target(prediction):
    """Data concentrated at c: the exact predictor of each target gets a loss of ~0, and the wrong target does not."""
    abar = make_scheduler().alphas_cumprod
    c = torch.full((512, 1, 1), 0.7)

    class Shift(torch.nn.Module):
        def forward(self, x, t):
            a = abar[t].view(-1, 1, 1)
            return (x - a.sqrt() * c) / (1 - a).sqrt()

    torch.manual_seed(0)
    exact = Diffusion(AsTarget(Shift(), abar, prediction), prediction=prediction).loss(c)
    wrong = Diffusion(AsTarget(Shift(), abar, prediction), prediction="epsilon" if prediction != "epsilon"
                      else "sample").loss(c)
    assert exact.item() < 1e-6 and wrong.item() > 0.1


def test_an_unknown_prediction_target_is_refused():
    with pytest.raises(ValueError, match="unknown prediction target"):
        make_scheduler(prediction="noise")
