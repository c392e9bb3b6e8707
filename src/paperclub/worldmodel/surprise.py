"""Surprise: the world model's latent prediction error along an episode spikes at physically impossible
events. We run twin episodes from the same seed with the same scripted actions: a clean one, one where the
object is teleported mid-episode, and one where its colour changes mid-episode. The error of the transition
into the perturbed frame is compared with the same transition of the clean twin (paired, one-sided Wilcoxon
signed-rank test, H1: perturbed > clean)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from tqdm import tqdm

from paperclub.errors import UserError
from paperclub.worldmodel.envs import make_env, make_policy
from paperclub.worldmodel.model import LeWM, frames_to_tensor

KINDS = ("clean", "teleport", "color")


@dataclass
class SurpriseConfig:
    episodes: int = 30
    blocks: int = 12  # action blocks per episode
    perturb_block: int = 6  # the frame after this many blocks is perturbed
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.perturb_block < self.blocks:
            raise UserError("perturb_block must be in [1, blocks)")
        if self.episodes < 2:
            raise UserError("--episodes must be >= 2 for a paired test")


def run_twin(env_name: str, env, model_cfg, seed: int, kind: str, cfg: SurpriseConfig):
    """Frames at block boundaries (blocks + 1) and the executed action blocks (blocks)."""
    obs, _ = env.reset(seed=seed)
    policy = make_policy(env_name, env, np.random.default_rng(seed))
    perturb_rng = np.random.default_rng(seed + 7)
    frames, blocks = [obs], []
    for b in range(cfg.blocks):
        block = []
        for _ in range(model_cfg.frameskip):
            a = policy()
            obs, *_ = env.step(a)
            block.append(a)
        if b == cfg.perturb_block - 1 and kind != "clean":
            env.teleport(perturb_rng) if kind == "teleport" else env.change_color()
            obs = env.render()
        frames.append(obs)
        blocks.append(np.concatenate(block))
    return np.stack(frames), np.stack(blocks).astype(np.float32)


@torch.no_grad()
def prediction_errors(model: LeWM, frames: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Squared error of each one-block-ahead prediction (from the last `history` true latents)."""
    z = model.encode(frames_to_tensor(frames))
    a = torch.from_numpy(blocks)
    h = model.cfg.history
    errs = []
    for t in range(len(blocks)):
        lo = max(0, t + 1 - h)
        pred = model.predict(z[None, lo : t + 1], a[None, lo : t + 1])[0, -1]
        errs.append(float((pred - z[t + 1]).pow(2).sum()))
    return np.array(errs)


def paired_p_value(spike: np.ndarray, base: np.ndarray) -> float:
    """One-sided Wilcoxon signed-rank p-value for H1: spike > base (paired). Where no pair differs, a model that
    cannot tell the twins apart, there is no evidence: 1.0 (scipy gets there through a division by zero)."""
    if np.array_equal(spike, base):
        return 1.0
    return float(stats.wilcoxon(spike, base, alternative="greater").pvalue)


def surprise_experiment(model: LeWM, env_name: str, cfg: SurpriseConfig, progress: bool = True) -> dict:
    model.eval()
    env = make_env(env_name, model.cfg.image_size, getattr(model.cfg, "antialias", False))
    traces = {k: [] for k in KINDS}
    for i in tqdm(range(cfg.episodes), desc=f"surprise {env_name}", disable=not progress):
        seed = 2_000_000 + 1000 * cfg.seed + i
        for kind in KINDS:
            traces[kind].append(
                prediction_errors(model, *run_twin(env_name, env, model.cfg, seed, kind, cfg))
            )
    traces = {k: np.stack(v) for k, v in traces.items()}
    t = cfg.perturb_block - 1  # the transition whose target frame is perturbed
    clean_before = traces["clean"][:, :t].mean()
    out = {
        "env": env_name,
        "episodes": cfg.episodes,
        "perturb_transition": t,
        "mean_error_before_perturbation": float(clean_before),
    }
    for kind in ("teleport", "color"):
        spike, base = traces[kind][:, t], traces["clean"][:, t]
        p_value = paired_p_value(spike, base)
        out[kind] = {
            "median_error_at_perturbation": float(np.median(spike)),
            "median_error_clean_twin": float(np.median(base)),
            "median_ratio_to_clean_twin": float(np.median(spike / np.maximum(base, 1e-12))),
            "fraction_episodes_higher": float(np.mean(spike > base)),
            "wilcoxon_p_value": p_value,
            "significant_at_0.01": p_value < 0.01,
        }
    out["traces_mean"] = {k: v.mean(axis=0).tolist() for k, v in traces.items()}
    return out
