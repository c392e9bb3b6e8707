"""Training loop: MSE(next-latent prediction) + lambda * SIGReg(latents), end to end, no EMA/stop-grad.

With `rollout_weight` > 0 the loss also has rollout_weight * MSE(imagined, encoded): the window's latents
predicted autoregressively from its first frame alone, each prediction fed back as the next input, the way the
planner imagines a plan. Teacher forcing alone never shows the predictor its own errors.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from paperclub.atomic import atomic_path, write_json
from paperclub.device import resolve_device
from paperclub.errors import UserError
from paperclub.worldmodel.checkpoint import save_checkpoint
from paperclub.worldmodel.data import Episodes, WindowSampler
from paperclub.worldmodel.model import LeWM, LeWMConfig, frames_to_tensor, prediction_loss
from paperclub.worldmodel.plots import line_plot
from paperclub.worldmodel.probe import effective_rank
from paperclub.worldmodel.sigreg import sigreg

log = logging.getLogger(__name__)

# Everything a run needs to continue where it stopped, written with each checkpoint: model and optimizer state,
# the step, the random streams (batches, SIGReg directions), the elapsed time and the logs. One file, so the
# model and the optimizer state it goes with are always from the same step.
TRAINER_STATE = "trainer_state.pt"
TRAINER_KEYS = {"steps_done", "elapsed_s", "model_config", "model", "optimizer", "streams", "history", "evals"}


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
    rollout_weight: float = 0.0  # weight of the autoregressive (multi-step) prediction loss; 0: teacher forcing only

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 2:
            raise UserError("--steps must be >= 1 and --batch-size >= 2")
        if self.sigreg_weight < 0:
            raise UserError("--sigreg-weight must be >= 0")
        if self.rollout_weight < 0:
            raise UserError("--rollout-weight must be >= 0")
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


def forward_batch(
    model: LeWM, frames: np.ndarray, actions: np.ndarray, rollout: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The model on a sampled batch, on the model's device; bf16 autocast on CUDA, float32 outputs:
    (teacher-forced predictions of latents 1..T, encoded latents 0..T, and with `rollout` the latents 1..T
    imagined from latent 0 alone, else None)."""
    device = next(model.parameters()).device
    x = frames_to_tensor(torch.from_numpy(frames).to(device, non_blocking=True))  # uint8 over the bus, not float
    a = torch.from_numpy(actions).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        pred, z = model(x, a)
        imagined = model.imagine(z[:, 0], a[:, :-1]) if rollout else None
    return pred.float(), z.float(), None if imagined is None else imagined.float()


@torch.no_grad()
def evaluate(model: LeWM, sampler: WindowSampler, n: int = 256, seed: int = 1234) -> dict:
    model.eval()
    frames, actions = sampler.sample(n, np.random.default_rng(seed))
    pred, z, imagined = forward_batch(model, frames, actions, rollout=True)
    model.train()
    return {
        "val_pred_loss": float(prediction_loss(pred, z)),
        "val_rollout_loss": float(prediction_loss(imagined, z)),
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
    resume: bool = False,
) -> dict:
    """Train a LeWM on `data` on `device` (auto, cpu, cuda), write the checkpoint, log and training-curve plot
    into `out`. `resume`: continue the run saved in `out` (same model config; `cfg` may extend its budget).
    Ctrl-C stops it after the current step; it saves and returns with `interrupted` set. Resumed, it continues
    with the same batches and SIGReg directions, so an interrupted and resumed run ends with the same weights as
    one that ran through."""
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
    first, elapsed_before = 0, 0.0
    if resume:
        first, elapsed_before, history, evals = _restore(out, model, model_cfg, opt, rng, gen)
        if first >= cfg.steps:
            raise UserError(f"{out} already ran {first} steps of --steps {cfg.steps}: give a larger --steps to go on")
        log.info("resuming %s at step %d (%.0f s trained)", out, first, elapsed_before)
    start = time.perf_counter() - elapsed_before
    bar = tqdm(range(first, cfg.steps), desc="train lewm", disable=not progress, initial=first, total=cfg.steps)
    done, interrupted = first, False
    with StopOnInterrupt() as stop:
        for step in bar:
            if stop.requested:  # Ctrl-C: stop between steps, so the saved state is a whole step's
                interrupted = True
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg, time.perf_counter() - start)
            frames, actions = sampler.sample(cfg.batch_size, rng)
            pred, z, imagined = forward_batch(model, frames, actions, rollout=cfg.rollout_weight > 0)
            pred_loss = prediction_loss(pred, z)
            reg = sigreg(z, cfg.sigreg_directions, generator=gen)
            loss = pred_loss + cfg.sigreg_weight * reg
            if imagined is not None:
                loss = loss + cfg.rollout_weight * prediction_loss(imagined, z)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done = step + 1
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
                _save(model, out, meta, history, evals, done, opt, _streams(rng, gen), elapsed)
            if last:
                break
    bar.close()
    elapsed = time.perf_counter() - start
    if interrupted:
        evals.append({"step": done - 1, "time_s": elapsed, **evaluate(model, val_sampler)})
        _save(model, out, meta, history, evals, done, opt, _streams(rng, gen), elapsed)
        log.warning("interrupted after %d steps: saved %s (continue with --resume)", done, out)
        return {"steps_done": done, "time_s": elapsed, "interrupted": True, **evals[-1]}
    return {"steps_done": done, "time_s": elapsed, **evals[-1]}


class StopOnInterrupt:
    """Within the block, the first Ctrl-C (SIGINT) only sets `requested`; a second one interrupts at once.
    Outside the main thread (where Python cannot install handlers) Ctrl-C keeps its usual effect."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: stopping after this step and saving (press again to quit at once)")

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _streams(rng: np.random.Generator, gen: torch.Generator) -> dict:
    return {"numpy": rng.bit_generator.state, "sigreg": gen.get_state(), "torch": torch.get_rng_state()}


def _set_streams(rng: np.random.Generator, gen: torch.Generator, streams: dict) -> None:
    rng.bit_generator.state = streams["numpy"]
    gen.set_state(streams["sigreg"])
    torch.set_rng_state(streams["torch"])


def _restore(out: Path, model: LeWM, model_cfg: LeWMConfig, opt: torch.optim.Optimizer, rng: np.random.Generator,
             gen: torch.Generator) -> tuple[int, float, dict, list[dict]]:
    """Load the trainer state of the run in `out` into model, optimizer and random streams."""
    path = out / TRAINER_STATE
    if not path.is_file():
        raise UserError(f"{path} not found: nothing to resume (train without --resume to start a run in {out})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"cannot read {path} ({str(e).splitlines()[0]}): start a new run instead") from e
    missing = sorted(TRAINER_KEYS - state.keys()) if isinstance(state, dict) else sorted(TRAINER_KEYS)
    if missing:
        raise UserError(f"{path} is corrupt (it lacks {', '.join(missing)}): start a new run instead")
    if state["model_config"] != model_cfg.to_dict():
        raise UserError(f"{out} was trained with another model configuration: resume with the same --config, "
                        "--latent-dim and --frameskip, or start a new run")
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in state["model"].items()})
    opt.load_state_dict(state["optimizer"])
    _set_streams(rng, gen, state["streams"])
    return state["steps_done"], state["elapsed_s"], state["history"], state["evals"]


def _save(model: LeWM, out: Path, meta: dict, history: dict, evals: list[dict], done: int,
          opt: torch.optim.Optimizer, streams: dict, elapsed: float) -> None:
    save_checkpoint(model, out, {**meta, "steps_done": done, "final_eval": evals[-1]})
    write_json(out / "train_log.json", {"history": history, "evals": evals})
    with atomic_path(out / TRAINER_STATE) as tmp:
        torch.save({"steps_done": done, "elapsed_s": elapsed, "model_config": model.cfg.to_dict(),
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": opt.state_dict(), "streams": streams, "history": history, "evals": evals}, tmp)
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
