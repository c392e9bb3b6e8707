"""Training loop: MSE(next-latent prediction) + lambda * SIGReg(latents), end to end, no EMA/stop-grad."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from paperclub.atomic import write_json
from paperclub.device import resolve_device
from paperclub.errors import UserError
from paperclub.worldmodel.checkpoint import save_checkpoint
from paperclub.worldmodel.data import Episodes, WindowSampler
from paperclub.worldmodel.model import LeWM, LeWMConfig, frames_to_tensor, prediction_loss
from paperclub.worldmodel.plots import line_plot
from paperclub.worldmodel.probe import effective_rank
from paperclub.worldmodel.sigreg import sigreg

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-3
    warmup: int = 100
    sigreg_weight: float = 0.1
    sigreg_directions: int = 1024
    max_minutes: float | None = None  # stop early (and save) when this much wall time has passed
    val_fraction: float = 0.1
    eval_every: int = 200
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 2:
            raise UserError("--steps must be >= 1 and --batch-size >= 2")
        if self.sigreg_weight < 0:
            raise UserError("--sigreg-weight must be >= 0")
        if self.sigreg_directions < 1:
            raise UserError("--sigreg-directions must be >= 1")
        if not 0 <= self.val_fraction < 1:
            raise UserError("val_fraction must be in [0, 1)")


def lr_at(step: int, cfg: TrainConfig, elapsed_s: float = 0.0) -> float:
    """Linear warmup, then cosine decay over the budget: steps, or wall time when that runs out first."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.max_minutes:
        progress = max(progress, elapsed_s / (60 * cfg.max_minutes))
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def split_episodes(data: Episodes, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(data.num_episodes)
    n_val = int(round(val_fraction * data.num_episodes)) if data.num_episodes > 1 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def forward_batch(model: LeWM, frames: np.ndarray, actions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The model on a sampled batch, on the model's device; bf16 autocast on CUDA, float32 outputs."""
    device = next(model.parameters()).device
    x = frames_to_tensor(torch.from_numpy(frames).to(device, non_blocking=True))  # uint8 over the bus, not float
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        pred, z = model(x, torch.from_numpy(actions).to(device))
    return pred.float(), z.float()


@torch.no_grad()
def evaluate(model: LeWM, sampler: WindowSampler, n: int = 256, seed: int = 1234) -> dict:
    model.eval()
    frames, actions = sampler.sample(n, np.random.default_rng(seed))
    pred, z = forward_batch(model, frames, actions)
    model.train()
    return {
        "val_pred_loss": float(prediction_loss(pred, z)),
        "val_effective_rank": effective_rank(z.reshape(-1, z.shape[-1]).cpu()),
    }


def train(
    model_cfg: LeWMConfig,
    cfg: TrainConfig,
    data: Episodes,
    out: str | os.PathLike,
    meta: dict | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> dict:
    """Train a LeWM on `data` on `device` (auto, cpu, cuda), write the checkpoint, log and training-curve plot
    into `out`."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out = Path(out)
    train_eps, val_eps = split_episodes(data, cfg.val_fraction, cfg.seed)
    sampler = WindowSampler(data, model_cfg.history, model_cfg.frameskip, train_eps)
    val_sampler = WindowSampler(
        data, model_cfg.history, model_cfg.frameskip, val_eps if len(val_eps) else None
    )
    model = LeWM(model_cfg).to(resolve_device(device))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: dict[str, list] = {"step": [], "loss": [], "pred_loss": [], "sigreg": [], "time_s": []}
    evals: list[dict] = []
    meta = {**(meta or {}), "train": asdict(cfg), "env": data.env}
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="train lewm", disable=not progress)
    step = 0
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg, time.perf_counter() - start)
        frames, actions = sampler.sample(cfg.batch_size, rng)
        pred, z = forward_batch(model, frames, actions)
        pred_loss = prediction_loss(pred, z)
        reg = sigreg(z, cfg.sigreg_directions, generator=gen)
        loss = pred_loss + cfg.sigreg_weight * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        elapsed = time.perf_counter() - start
        if step % 10 == 0 or step == cfg.steps - 1:
            for key, val in (
                ("step", step),
                ("loss", loss.item()),
                ("pred_loss", pred_loss.item()),
                ("sigreg", reg.item()),
                ("time_s", elapsed),
            ):
                history[key].append(val)
            bar.set_postfix(pred=f"{pred_loss.item():.4f}", sigreg=f"{reg.item():.3f}")
        last = step == cfg.steps - 1 or (cfg.max_minutes is not None and elapsed > 60 * cfg.max_minutes)
        if (step + 1) % cfg.eval_every == 0 or last:
            ev = {"step": step, "time_s": elapsed, **evaluate(model, val_sampler)}
            evals.append(ev)
            log.info("step %d: %s", step, ev)
            _save(model, out, meta, history, evals, step)
        if last:
            break
    return {"steps_done": step + 1, "time_s": time.perf_counter() - start, **evals[-1]}


def _save(model: LeWM, out: Path, meta: dict, history: dict, evals: list[dict], step: int) -> None:
    save_checkpoint(model, out, {**meta, "steps_done": step + 1, "final_eval": evals[-1]})
    write_json(out / "train_log.json", {"history": history, "evals": evals})
    line_plot(
        out / "training_curve",
        {
            "prediction MSE": (history["step"], history["pred_loss"]),
            "SIGReg": (history["step"], history["sigreg"]),
        },
        "step",
        "loss",
        f"LeWM training ({meta.get('env')}, lambda={meta['train']['sigreg_weight']})",
        logy=True,
    )
