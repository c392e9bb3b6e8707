"""The diffusion core around diffusers' schedulers: epsilon-prediction training on a cosine schedule, and batched
DDIM sampling with a chosen number of steps, both conditioned through whatever the denoiser takes.

`denoiser(x_t, t, *cond)` predicts the noise in x_t at integer timesteps t (B,).
"""

from __future__ import annotations

import torch
from torch import nn

TRAIN_TIMESTEPS = 1000


def make_scheduler(train_timesteps: int = TRAIN_TIMESTEPS):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=train_timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type="epsilon", clip_sample=False)


class Diffusion(nn.Module):
    # DDIM's first step recovers x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); at t = 999 of the cosine schedule
    # abar_t ~ 0, so an imperfect eps is blown up: predicted x0 (data normalized to unit std) is clipped to +-clip.
    spacing = "trailing"
    clip: float | None = 5.0

    def __init__(self, denoiser: nn.Module, train_timesteps: int = TRAIN_TIMESTEPS):
        super().__init__()
        self.denoiser = denoiser
        self.scheduler = make_scheduler(train_timesteps)

    def loss(self, x0: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        """Mean squared error between the true and predicted noise at a uniformly random timestep per sample."""
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.scheduler.add_noise(x0, noise, t)
        return torch.mean((self.denoiser(x_t, t, *cond) - noise) ** 2)

    @torch.no_grad()
    def sample(self, shape: tuple[int, ...], *cond: torch.Tensor, steps: int = 10,
               generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from Gaussian noise of `shape` (or the given starting `noise`) in `steps`
        denoiser calls."""
        from diffusers import DDIMScheduler

        ddim = DDIMScheduler.from_config(self.scheduler.config, timestep_spacing=self.spacing,
                                         clip_sample=self.clip is not None, clip_sample_range=self.clip or 1.0)
        ddim.set_timesteps(steps)
        x = torch.randn(shape, generator=generator) if noise is None else noise
        for t in ddim.timesteps:
            eps = self.denoiser(x, t.expand(shape[0]), *cond)
            x = ddim.step(eps, t, x, eta=0.0).prev_sample
        return x
