"""A predictor ensemble on a frozen encoder, and a planning cost that pays for its disagreement.

CEM searches for the plan whose *imagined* end is closest to the goal, so with a single predictor it also
searches for the predictor's errors: the harder it searches, the more it finds plans that only look good
(BENCHMARKS.md, "What limits Push-T": a perfect predictor with LeWM's own encoder and goal cost solves 96% of
Push-T episodes, the learned one 60%). The remedy from model-based RL (PETS, MOPO) is to train several
predictors that differ only in their initialization and data order and to score a plan by all of them: where
they agree the plan is in the data's support; where they disagree at least one of them is wrong.

Every member reads and predicts the checkpoint's own latents (the encoder and projector are frozen), so the
dataset is encoded once and a member trains on latent windows only: thousands of steps a minute on one CPU
core, with no image in the loop. A member is an action encoder and a predictor of the checkpoint's shapes.

With member predictions z_m (m = 1..M) of a plan's final latent, their mean z̄ and the goal g, the cost is

    J = ||W(z̄ - g)||^2 + beta * (1/M) sum_m ||W(z_m - z̄)||^2

in the checkpoint's goal metric W (the identity for the plain latent distance). beta = 1 is the members' mean
cost; beta = 0 scores the mean prediction only; beta > 1 is pessimistic about disagreement. Stored beside the
weights as `ensemble.safetensors` (the members' weights, prefixed `m{i}.`) with its config in the metadata.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from paperclub.atomic import atomic_path
from paperclub.errors import UserError
from paperclub.worldmodel.checkpoint import first_line
from paperclub.worldmodel.data import Episodes, WindowSampler
from paperclub.worldmodel.model import ActionEncoder, LeWM, LeWMConfig, Predictor, frames_to_tensor
from paperclub.worldmodel.train import split_episodes

log = logging.getLogger(__name__)

ENSEMBLE_FILE = "ensemble.safetensors"


@dataclass
class EnsembleConfig:
    members: int = 3
    steps: int = 3000  # per member
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-3
    warmup: int = 200
    rollout_weight: float = 1.0  # weight of the multi-step (imagined from the first latent) loss
    # the error the members learn to avoid: "latent" (squared latent distance, as `lewm train`) or "step" (the
    # checkpoint's step metric, the goal cost planning pays: it weighs the slow block above the fast pusher)
    loss_metric: str = "latent"
    val_fraction: float = 0.1  # the same episode split as `lewm train` with the same seed
    seed: int = 0  # member i starts from seed + i (initialization and batch order)

    def __post_init__(self):
        if self.members < 1:
            raise UserError(f"--members must be >= 1, got {self.members}")
        if self.steps < 1 or self.batch_size < 1:
            raise UserError("--steps and --batch-size must be >= 1")
        if not self.lr > 0 or self.weight_decay < 0 or self.rollout_weight < 0 or self.warmup < 0:
            raise UserError("the ensemble needs lr > 0 and weight decay, warm-up and rollout weight >= 0")
        if self.loss_metric not in ("latent", "step"):
            raise UserError(f"ensemble loss metric must be 'latent' or 'step', got {self.loss_metric!r}")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")


class Member(nn.Module):
    """One ensemble member: an action encoder and a predictor with the checkpoint's shapes."""

    def __init__(self, cfg: LeWMConfig):
        super().__init__()
        self.history = cfg.history
        self.action_encoder = ActionEncoder(cfg)
        self.predictor = Predictor(cfg)

    def predict(self, z: torch.Tensor, action_blocks: torch.Tensor) -> torch.Tensor:
        return self.predictor(z, self.action_encoder(action_blocks))

    def imagine(self, z0: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
        """As `LeWM.imagine`: start latents (B, D), plans (B, H, kA) -> latents after each block (B, H, D)."""
        zs, emb = [z0], self.action_encoder(plan)
        for step in range(plan.shape[1]):
            lo = max(0, step + 1 - self.history)
            zs.append(self.predictor(torch.stack(zs[lo:], dim=1), emb[:, lo : step + 1])[:, -1])
        return torch.stack(zs[1:], dim=1)


@torch.no_grad()
def encode_dataset(model: LeWM, data: Episodes, batch: int = 512, progress: bool = True) -> np.ndarray:
    """Every frame of `data` through the frozen encoder and projector (eval mode): (frames, latent_dim) float32."""
    model.eval()
    out = np.empty((len(data.frames), model.cfg.latent_dim), dtype=np.float32)
    for lo in tqdm(range(0, len(data.frames), batch), desc="encode frames", disable=not progress):
        x = frames_to_tensor(torch.from_numpy(data.frames[lo : lo + batch]))
        out[lo : lo + batch] = model.encode(x).numpy()
    return out


class LatentWindows:
    """`WindowSampler`'s windows with the frames replaced by their latents: (B, history+1, D), (B, history+1, kA)."""

    def __init__(self, latents: np.ndarray, sampler: WindowSampler):
        self.latents, self.sampler = torch.from_numpy(latents), sampler
        self.actions = sampler.data.actions

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        starts = rng.choice(self.sampler.window_starts, size=n)
        k, t = self.sampler.frameskip, self.sampler.history + 1
        idx = starts[:, None] + k * np.arange(t)[None, :]
        act_idx = np.minimum(idx[:, :, None] + np.arange(k)[None, None, :], len(self.actions) - 1)
        actions = self.actions[act_idx].reshape(n, t, -1)  # as `WindowSampler.window`, without the frames
        return self.latents[torch.from_numpy(idx)], torch.from_numpy(actions)


def member_losses(member: Member, z: torch.Tensor, a: torch.Tensor,
                  whiten: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher-forced MSE of latents 1..T, MSE of latents 1..T imagined from latent 0 alone); with `whiten` (the
    step metric's W) the squared errors are measured as ||W (pred - z)||^2 / D."""
    pred = member.predict(z[:, :-1], a[:, :-1])
    imagined = member.imagine(z[:, 0], a[:, :-1])
    target = z[:, 1:]

    def mse(x: torch.Tensor) -> torch.Tensor:
        err = x - target
        return (err if whiten is None else err @ whiten.T).pow(2).mean()

    return mse(pred), mse(imagined)


def val_losses(member: Member, z: torch.Tensor, a: torch.Tensor, whiten: torch.Tensor | None) -> dict:
    """Validation losses in the latent distance, and with `whiten` also in the step metric."""
    tf, roll = member_losses(member, z, a)
    out = {"val_pred_loss": float(tf), "val_rollout_loss": float(roll)}
    if whiten is not None:
        tf, roll = member_losses(member, z, a, whiten)
        out |= {"val_pred_loss_step_metric": float(tf), "val_rollout_loss_step_metric": float(roll)}
    return out


def train_member(
    cfg_model: LeWMConfig, cfg: EnsembleConfig, index: int, train: LatentWindows, val: LatentWindows,
    progress: bool = True, whiten: torch.Tensor | None = None,
) -> tuple[Member, dict]:
    """Member `index`: AdamW, linear warm-up then cosine to 0 over `cfg.steps`, its own seed."""
    seed = cfg.seed + index
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    member = Member(cfg_model)
    opt = torch.optim.AdamW(member.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"member {index}", disable=not progress)
    for step in bar:
        warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0
        for group in opt.param_groups:
            group["lr"] = cfg.lr * warm * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
        z, a = train.sample(cfg.batch_size, rng)
        tf, roll = member_losses(member, z, a, whiten)
        loss = tf + cfg.rollout_weight * roll
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            bar.set_postfix(tf=f"{tf.item():.4f}", roll=f"{roll.item():.4f}")
    member.eval()
    with torch.no_grad():
        for p in member.parameters():  # as saved (save_ensemble): the validation loss is the shipped weights'
            p.copy_(p.half().float())
        z, a = val.sample(1024, np.random.default_rng(1234))
        stats = {"member": index, "seed": seed, **val_losses(member, z, a, whiten),
                 "time_s": time.perf_counter() - start}
    log.info("member %d: %s", index, stats)
    return member, stats


def train_ensemble(model: LeWM, data: Episodes, cfg: EnsembleConfig, progress: bool = True,
                   train_seed: int = 0, whiten: torch.Tensor | None = None) -> tuple[list[Member], dict]:
    """Encode `data` with the frozen `model`, train `cfg.members` members on its latent windows (validation on
    the episodes `lewm train --seed train_seed` held out) and report each member's validation losses (in the
    plain latent distance) beside the checkpoint's own predictor's on the same windows. `whiten`: the step
    metric, required when `cfg.loss_metric == "step"`."""
    if (whiten is not None) != (cfg.loss_metric == "step"):
        raise ValueError(f"loss metric {cfg.loss_metric!r} with{'out' if whiten is None else ''} a step metric")
    latents = encode_dataset(model, data, progress=progress)
    train_eps, val_eps = split_episodes(data, cfg.val_fraction, train_seed)
    h, k = model.cfg.history, model.cfg.frameskip
    train = LatentWindows(latents, WindowSampler(data, h, k, train_eps))
    val = LatentWindows(latents, WindowSampler(data, h, k, val_eps if len(val_eps) else None))
    members, stats = [], []
    for i in range(cfg.members):
        member, s = train_member(model.cfg, cfg, i, train, val, progress, whiten)
        members.append(member)
        stats.append(s)
    base = Member(model.cfg)
    base.action_encoder.load_state_dict(model.action_encoder.state_dict())
    base.predictor.load_state_dict(model.predictor.state_dict())
    base.eval()
    with torch.no_grad():
        z, a = val.sample(1024, np.random.default_rng(1234))
        report = {"members": stats, "checkpoint_predictor": val_losses(base, z, a, whiten), "config": asdict(cfg)}
    return members, report


def save_ensemble(ckpt: str | os.PathLike, members: list[Member], cfg: EnsembleConfig, dataset: str) -> Path:
    """Write the members into `ckpt`/ensemble.safetensors in float16 (half the size; what is saved is what is
    evaluated: `train_ensemble` rounds its members the same way)."""
    path = Path(ckpt) / ENSEMBLE_FILE
    state = {f"m{i}.{k}": v.detach().to(torch.float16).contiguous() for i, m in enumerate(members)
             for k, v in m.state_dict().items()}
    meta = {"config": json.dumps(asdict(cfg)), "dataset": str(dataset), "members": str(len(members))}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def load_ensemble(ckpt: str | os.PathLike, cfg_model: LeWMConfig) -> list[Member] | None:
    """The checkpoint's ensemble members (eval mode), or None when it has none. A corrupt file is a UserError."""
    path = Path(ckpt) / ENSEMBLE_FILE
    if not path.is_file():
        return None
    fix = f"make it again with `paperclub lewm ensemble --ckpt {Path(ckpt)} --data DATASET`"
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is truncated or corrupt ({first_line(e)}): {fix}") from e
    bad = next((k for k, v in state.items() if not torch.isfinite(v).all()), None)
    if bad is not None:
        raise UserError(f"{path}: {bad} holds NaN or infinite values: {fix}")
    n = len({k.split(".", 1)[0] for k in state})
    members = []
    for i in range(n):
        member = Member(cfg_model)
        own = {k.split(".", 1)[1]: v.float() for k, v in state.items() if k.startswith(f"m{i}.")}
        try:
            member.load_state_dict(own)
        except RuntimeError as e:
            raise UserError(f"{path} does not fit this checkpoint's shapes ({first_line(e)}): {fix}") from e
        member.eval()
        members.append(member)
    if not members:
        raise UserError(f"{path} holds no members: {fix}")
    return members


class EnsembleWM(nn.Module):
    """The checkpoint's encoder with the ensemble's predictors, for `cem_plan`: `encode` as the checkpoint,
    `plan_cost` as in the module docstring (weight `beta` on the disagreement)."""

    def __init__(self, model: LeWM, members: list[Member], beta: float = 1.0):
        super().__init__()
        if not 0 <= beta < float("inf"):
            raise UserError(f"--disagreement must be a finite number >= 0, got {beta}")
        self.base, self.members, self.beta = model, nn.ModuleList(members), beta
        self.cfg = model.cfg

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.base.encode(frames)

    @torch.no_grad()
    def rollout_members(self, z0: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
        """Final latents of every member: (M, B, D)."""
        return torch.stack([m.imagine(z0, plan)[:, -1] for m in self.members])

    @torch.no_grad()
    def rollout(self, z0: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
        """The members' mean final latent (B, D)."""
        return self.rollout_members(z0, plan).mean(dim=0)

    @torch.no_grad()
    def plan_cost(self, z0: torch.Tensor, plan: torch.Tensor, z_goal: torch.Tensor, metric=None) -> torch.Tensor:
        """The goal cost (`planner.cost`) of the members' mean final latent plus beta x their mean squared
        distance from it, measured in the step metric where the goal cost has one."""
        from paperclub.worldmodel.planner import cost, metric_whitening

        zs = self.rollout_members(z0, plan)
        mean = zs.mean(dim=0)
        spread = zs - mean
        whiten = metric_whitening(metric)
        if whiten is not None:
            spread = spread @ whiten.T
        return cost(mean, z_goal, metric) + self.beta * spread.pow(2).sum(dim=-1).mean(dim=0)
