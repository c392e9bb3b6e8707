"""The step metric: a goal cost measured in units of how far the latent moves in one environment step.

Planning scores an imagined final latent z against the goal latent g. The plain cost ||z - g||^2 weighs every
latent direction alike, but the directions are not alike: on Push-T the pusher, which moves every step, owns
most of the latent's variance, so moving the pusher 20 units costs 20x as much as moving the block 20 units
(`benchmarks/lewm_planning_diagnostics.py --sensitivity`) and the planner matches the pusher, not the block.

The step metric divides each direction by how much the latent moves along it in one step of the training
data:

    cost(z, g) = (z - g)^T (Sigma + eps I)^{-1} (z - g),    Sigma = E[(z_{t+1} - z_t)(z_{t+1} - z_t)^T]

over consecutive frames of the training episodes, with eps = `shrink` x the median eigenvalue of Sigma (a
direction that almost never moves would otherwise get an unbounded weight and amplify the predictor's error along
it). It reads as a squared number of typical steps between z and g: a slow variable (the block) that is far
from its goal costs more than a fast one (the pusher) that is as far in pixels. It needs no labels: only the
frames that trained the model. Stored as the whitening matrix W (W^T W = (Sigma + eps I)^{-1}) in
`goal_metric.safetensors` beside the weights; the cost is then ||W z - W g||^2.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from paperclub.atomic import atomic_path
from paperclub.errors import UserError
from paperclub.worldmodel.checkpoint import first_line
from paperclub.worldmodel.model import frames_to_tensor

METRIC_FILE = "goal_metric.safetensors"


@dataclass
class StepMetricConfig:
    lag: int = 1  # env steps between the two frames of a move
    shrink: float = 0.01  # eps, as a fraction of the median eigenvalue of the move covariance
    max_episodes: int = 300  # evenly spaced over the dataset

    def __post_init__(self):
        if self.lag < 1:
            raise UserError(f"step metric lag must be >= 1, got {self.lag}")
        if not self.shrink > 0:
            raise UserError(f"step metric shrink must be > 0, got {self.shrink}")
        if self.max_episodes < 1:
            raise UserError(f"step metric max_episodes must be >= 1, got {self.max_episodes}")


def move_covariance(latents: list[np.ndarray], lag: int) -> np.ndarray:
    """Second moment of latent moves over `lag` steps, pooled over episodes: mean of outer(d, d), d = z[t+lag] -
    z[t], in float64."""
    moves = [z[lag:].astype(np.float64) - z[:-lag] for z in latents if len(z) > lag]
    if not moves:
        raise UserError(f"no episode is longer than the step metric's lag ({lag} steps)")
    d = np.concatenate(moves)
    return d.T @ d / len(d)


def whitening(sigma: np.ndarray, shrink: float) -> np.ndarray:
    """W with W^T W = (sigma + eps I)^{-1}, eps = shrink x median eigenvalue of sigma."""
    w, v = np.linalg.eigh(sigma)
    eps = shrink * float(np.median(w))
    return (v / np.sqrt(np.clip(w, 0.0, None) + eps)).T


@torch.no_grad()
def fit_step_metric(model, data, cfg: StepMetricConfig | None = None) -> torch.Tensor:
    """The whitening matrix (latent_dim, latent_dim) of the step metric, from `data`'s episodes (`Episodes`)."""
    cfg = cfg or StepMetricConfig()
    model.eval()
    device = next(model.parameters()).device
    picks = np.unique(np.linspace(0, data.num_episodes - 1, min(cfg.max_episodes, data.num_episodes)).round())
    latents = []
    for i in picks.astype(int):
        frames = torch.from_numpy(data.episode(i)["frames"]).to(device)
        latents.append(model.encode(frames_to_tensor(frames)).double().cpu().numpy())
    return torch.from_numpy(whitening(move_covariance(latents, cfg.lag), cfg.shrink)).float()


def save_step_metric(ckpt: str | os.PathLike, w: torch.Tensor, cfg: StepMetricConfig, dataset: str) -> Path:
    path = Path(ckpt) / METRIC_FILE
    meta = {k: str(v) for k, v in asdict(cfg).items()} | {"dataset": str(dataset)}
    with atomic_path(path) as tmp:
        save_file({"whiten": w.contiguous()}, str(tmp), metadata=meta)
    return path


def load_step_metric(ckpt: str | os.PathLike, latent_dim: int) -> torch.Tensor | None:
    """The checkpoint's whitening matrix, or None when it has none. A corrupt file is a UserError."""
    path = Path(ckpt) / METRIC_FILE
    if not path.is_file():
        return None
    fix = f"make it again with `paperclub lewm metric --ckpt {Path(ckpt)} --data DATASET`"
    try:
        w = load_file(str(path))["whiten"]
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise UserError(f"{path} is truncated or corrupt ({first_line(e)}): {fix}") from e
    if tuple(w.shape) != (latent_dim, latent_dim) or not torch.isfinite(w).all():
        raise UserError(f"{path} holds a {tuple(w.shape)} matrix, not a finite ({latent_dim}, {latent_dim}) one: {fix}")
    return w.float()


def require_step_metric(ckpt: str | os.PathLike, latent_dim: int, flag: str) -> torch.Tensor:
    """`load_step_metric` for an option (`flag`) that cannot work without one: a missing file is a UserError
    that says how to make it."""
    w = load_step_metric(ckpt, latent_dim)
    if w is None:
        raise UserError(f"{flag}: {ckpt} has no {METRIC_FILE}; make it with `paperclub lewm metric --ckpt {ckpt} "
                        "--data DATASET` (the dataset the model trained on)")
    return w
