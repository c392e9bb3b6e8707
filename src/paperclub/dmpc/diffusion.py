"""The diffusion core around diffusers' schedulers: training on a cosine schedule, and batched DDIM sampling with a
chosen number of steps, both conditioned through whatever the denoiser takes.

`denoiser(x_t, t, *cond)` predicts, at integer timesteps t (B,), what `prediction` names: the noise in x_t
("epsilon", the paper's choice), the clean sample x0 ("sample"), or the velocity sqrt(abar) eps - sqrt(1 - abar) x0
("v_prediction"). The three are the same model family; they weight the timesteps' errors differently, and a
near-deterministic target (a dynamics model's next states) is learned more precisely by predicting it directly.
"""

from __future__ import annotations

import torch
from torch import nn

TRAIN_TIMESTEPS = 1000


PREDICTIONS = ("epsilon", "sample", "v_prediction")


def make_scheduler(train_timesteps: int = TRAIN_TIMESTEPS, prediction: str = "epsilon"):
    from diffusers import DDPMScheduler

    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction target {prediction!r}: one of {', '.join(PREDICTIONS)}")
    return DDPMScheduler(num_train_timesteps=train_timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type=prediction, clip_sample=False)


class Diffusion(nn.Module):
    # DDIM's first step recovers x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); at t = 999 of the cosine schedule
    # abar_t ~ 0, so an imperfect eps is blown up: predicted x0 (data normalized to unit std) is clipped to +-clip.
    spacing = "trailing"
    clip: float | None = 5.0

    def __init__(self, denoiser: nn.Module, train_timesteps: int = TRAIN_TIMESTEPS, prediction: str = "epsilon"):
        super().__init__()
        self.denoiser = denoiser
        self.prediction = prediction
        self.scheduler = make_scheduler(train_timesteps, prediction)

    def loss(self, x0: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        """Mean squared error between the denoiser's output and its target (the noise, x0 or the velocity) at a
        uniformly random timestep per sample."""
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.scheduler.add_noise(x0, noise, t)
        target = {"epsilon": noise, "sample": x0}.get(self.prediction)
        if target is None:
            target = self.scheduler.get_velocity(x0, noise, t)
        return torch.mean((self.denoiser(x_t, t, *cond) - target) ** 2)

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
