"""Probing a trained encoder: effective rank of the latent covariance, the collapse diagnostic.

effective rank = exp(entropy of the normalised eigenvalues of the covariance) (Roy & Vetterli, 2007): equal
to D for an isotropic cloud and 1 when all variance lies along one direction.
"""

from __future__ import annotations

import numpy as np
import torch

from paperclub.worldmodel.model import LeWM, frames_to_tensor


def effective_rank(z: torch.Tensor | np.ndarray) -> float:
    z = torch.as_tensor(z, dtype=torch.float64)
    z = z - z.mean(dim=0, keepdim=True)
    cov = z.T @ z / max(len(z) - 1, 1)
    eig = torch.linalg.eigvalsh(cov).clamp(min=0)
    total = eig.sum()
    if total <= 0:
        return 1.0
    p = eig / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def encode_frames(model: LeWM, frames: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat(
        [
            model.encode(frames_to_tensor(frames[i : i + batch_size]))
            for i in range(0, len(frames), batch_size)
        ]
    )


def probe_latents(model: LeWM, frames: np.ndarray) -> dict:
    z = encode_frames(model, frames)
    std = z.std(dim=0)
    return {
        "effective_rank": effective_rank(z),
        "latent_dim": int(z.shape[1]),
        "num_frames": int(len(z)),
        "effective_rank_fraction": effective_rank(z) / z.shape[1],
        "mean_latent_std": float(std.mean()),
        "min_latent_std": float(std.min()),
    }
