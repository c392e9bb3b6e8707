"""The transformer denoiser shared by the action proposal and the dynamics model.

Tokens: one per future step k = 0..F-1 (the noisy x_k, plus, where given, that step's conditioning such as the
action a_{t+k} for the dynamics model, plus a learned position), preceded by a timestep token and one token per
context entry (the current state and the history). The timestep and current-state embeddings are also added to
every future token, which makes small denoisers learn the conditioning much faster. A pre-norm transformer encoder
mixes them all (no causal mask: the whole future is denoised at once) and the future tokens are read out as the
predicted noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DenoiserConfig:
    d_model: int = 128
    layers: int = 3
    heads: int = 4
    dropout: float = 0.0


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer diffusion timesteps (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Denoiser(nn.Module):
    def __init__(self, x_dim: int, horizon: int, context_dim: int, step_cond_dim: int, cfg: DenoiserConfig):
        super().__init__()
        d = cfg.d_model
        self.cfg, self.horizon = cfg, horizon
        self.x_in = nn.Linear(x_dim, d)
        self.step_cond_in = nn.Linear(step_cond_dim, d) if step_cond_dim else None
        self.context_in = nn.Linear(context_dim, d)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.future_pos = nn.Parameter(torch.randn(horizon, d) * 0.02)
        self.prefix_pos = nn.Parameter(torch.randn(64, d) * 0.02)  # timestep token + up to 63 context tokens
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 4 * d, cfg.dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, x_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                step_cond: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, F, x_dim) noisy sample, t: (B,) timesteps, context: (B, C, context_dim) context tokens,
        step_cond: (B, F, step_cond_dim) or None. Returns the predicted noise (B, F, x_dim)."""
        future = self.x_in(x) + self.future_pos
        if self.step_cond_in is not None:
            future = future + self.step_cond_in(step_cond)
        time = self.time_mlp(timestep_embedding(t, self.cfg.d_model))[:, None]
        ctx = self.context_in(context)
        future = future + time + ctx[:, -1:]  # direct paths from the timestep and the current state to every step
        prefix = torch.cat([time, ctx], dim=1)
        prefix = prefix + self.prefix_pos[: prefix.shape[1]]
        h = self.encoder(torch.cat([prefix, future], dim=1))
        return self.out(self.norm(h[:, prefix.shape[1]:]))
