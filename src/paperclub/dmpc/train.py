"""Training the proposal, the dynamics model and the value together on one dataset, resumably.

Every `save_every` steps (and at the end) the checkpoint directory is rewritten atomically with the EMA weights
and the state to resume from; running again continues from the last save, and a finished run is left untouched.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from paperclub.atomic import atomic_path
from paperclub.dmpc import checkpoint
from paperclub.dmpc.dataset import Dataset
from paperclub.dmpc.denoiser import DenoiserConfig
from paperclub.dmpc.models import ModelConfig, TrajectoryModel, build_value
from paperclub.dmpc.windows import Windows
from paperclub.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 20_000
    batch_size: int = 256
    lr: float = 3e-4
    ema_decay: float = 0.995
    save_every: int = 1_000
    seed: int = 0
    horizon: int = 8
    history: int = 1
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    prediction: str = "epsilon"  # the denoisers' target (diffusion.PREDICTIONS)
    value_members: int = 1  # K value members (an ensemble for a pessimistic terminal value)
    value_arch: str = "mlp"  # mlp or transformer (value.py)


def losses(model: TrajectoryModel, batch: dict[str, torch.Tensor],
           parts: tuple[str, ...] = checkpoint.PARTS) -> dict[str, torch.Tensor]:
    """The training loss of each of `parts` (only those are computed: training the value alone costs no denoiser
    forward pass)."""
    each = {"proposal": lambda: model.proposal.loss(batch["context"], batch["actions"]),
            "dynamics": lambda: model.dynamics.loss(batch["context"], batch["actions"], batch["deltas"]),
            "value": lambda: value_loss(model, batch)}
    return {p: each[p]() for p in parts}


def value_loss(model: TrajectoryModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Squared error of every value member: an MLP value regresses G_t on s_t; a transformer value regresses
    G_{t+F} on the window's context, actions and states, over the windows whose episode has a step t+F."""
    if model.cfg.value_arch == "transformer":
        members = model.value(batch["context"], batch["actions"], batch["future_states"])  # (K, B)
        mask = batch["has_after"].float()
        return ((members - batch["returns_after"]) ** 2 * mask).sum() / (len(members) * mask.sum().clamp(min=1.0))
    return torch.mean((model.value(batch["state"]) - batch["returns"]) ** 2)


def train(data: Dataset, out: Path, cfg: TrainConfig, parts: tuple[str, ...] = checkpoint.PARTS,
          init: Path | None = None, progress: bool = True, meta: dict | None = None) -> dict:
    """Train `parts` of a model on `data` into checkpoint `out` (resuming from it if it holds a train state).
    With `init`, start from that checkpoint's weights and normalizers (fine-tuning). Returns the last losses."""
    out = Path(out)
    torch.manual_seed(cfg.seed)  # the initial weights (a resumed run then restores the RNG it saved)
    state = torch.load(out / "train_state.pt", weights_only=False) if (out / "train_state.pt").is_file() else None
    if init is not None:
        model, init_config = checkpoint.load(init, env=data.env)
        cfg.horizon, cfg.history, cfg.prediction = model.cfg.horizon, model.cfg.history, model.cfg.prediction
        norms = model.norms
        new_value = (cfg.value_members, cfg.value_arch) != (model.cfg.value_members, model.cfg.value_arch)
        if "value" in parts and new_value:  # a new value, from fresh weights
            model.cfg = replace(model.cfg, value_members=cfg.value_members, value_arch=cfg.value_arch)
            model.value = build_value(model.cfg)
        else:
            cfg.value_members, cfg.value_arch = model.cfg.value_members, model.cfg.value_arch
    else:
        init_config = None
    windows = _windows(data, cfg)
    if init is None:
        norms = windows.fit_normalizers()
        model = TrajectoryModel(ModelConfig(env=data.env, obs_dim=data.observations.shape[1],
                                            act_dim=data.actions.shape[1], horizon=cfg.horizon, history=cfg.history,
                                            denoiser=cfg.denoiser, prediction=cfg.prediction,
                                            value_members=cfg.value_members, value_arch=cfg.value_arch), norms)
    if state is not None:
        _check_same_model(out, model.cfg)
        model.load_state_dict(state["model"])
        model.norms = norms = type(norms).from_dict(state["normalizers"])
    ema = {p: AveragedModel(getattr(model, p), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay)) for p in parts}
    opts = {p: torch.optim.AdamW(getattr(model, p).parameters(), lr=cfg.lr) for p in parts}
    step = 0
    gen = torch.Generator().manual_seed(cfg.seed)
    if state is not None:
        step = state["step"]
        for p in parts:
            ema[p].load_state_dict(state["ema"][p])
            opts[p].load_state_dict(state["opt"][p])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resuming training in %s at step %d", out, step)
    if step >= cfg.steps:
        log.info("%s is already trained for %d steps: nothing to do", out, step)
        return state.get("losses", {})
    meta = {**(meta or {}), "dataset": {"env": data.env, "variant": data.variant, "kind": data.kind,
                                        "transitions": len(data)},
            "train": asdict(cfg), "parts_trained": list(parts)}
    if init_config is not None:
        meta["init"] = str(init)
    last: dict = {}
    bar = tqdm(total=cfg.steps, initial=step, desc="train D-MPC", unit="step", disable=not progress)
    model.train()
    while step < cfg.steps:
        batch = windows.sample(cfg.batch_size, norms, gen)
        loss = losses(model, batch, parts)
        for p in parts:
            opts[p].zero_grad(set_to_none=True)
            loss[p].backward()
            opts[p].step()
            ema[p].update_parameters(getattr(model, p))
        step += 1
        last = {p: loss[p].item() for p in parts}
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix({p: f"{v:.3f}" for p, v in last.items()})
        if step % cfg.save_every == 0 or step == cfg.steps:
            _save(out, model, ema, opts, step, gen, last, {**meta, "step": step, "losses": last}, parts, init)
    bar.close()
    log.info("trained %s to step %d: losses %s", out, step, last)
    return last


def _check_same_model(out: Path, cfg: ModelConfig) -> None:
    """Resuming needs the model the checkpoint holds: the same env and shapes."""
    saved = checkpoint.read_config(out)["model"]
    differ = [f"{k} {saved.get(k)} -> {v}" for k, v in cfg.to_dict().items() if saved.get(k) != v]
    if differ:
        raise UserError(f"{out} holds a run with another model ({'; '.join(differ)}): pass the options it was "
                        "trained with to resume it, or a new --out")


def _windows(data: Dataset, cfg: TrainConfig) -> Windows:
    try:
        return Windows(data, cfg.horizon, cfg.history, discount=0.99)
    except ValueError as e:
        raise UserError(f"{e} (--horizon {cfg.horizon})") from e


def _save(out: Path, model: TrajectoryModel, ema: dict, opts: dict, step: int, gen: torch.Generator, last: dict,
          meta: dict, parts: tuple[str, ...], init: Path | None) -> None:
    """The checkpoint with EMA weights for the trained parts; untrained parts are copied byte for byte from
    `init` (so fine-tuning the dynamics leaves the proposal and value files identical), or without one written as
    the model holds them."""
    import copy
    import shutil

    evaluated = copy.deepcopy(model)  # not a new TrajectoryModel: its initialization would draw from the RNG
    for p in parts:
        getattr(evaluated, p).load_state_dict(ema[p].module.state_dict())
    train_state = {"model": model.state_dict(), "normalizers": model.norms.to_dict(), "step": step,
                   "ema": {p: ema[p].state_dict() for p in parts}, "opt": {p: opts[p].state_dict() for p in parts},
                   "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "losses": last}
    with atomic_path(out) as tmp:
        if init is None:  # every part from the model (untrained ones as initialized)
            checkpoint.write(tmp, evaluated, meta, train_state)
            return
        checkpoint.write(tmp, evaluated, meta, train_state, parts=parts)
        for p in checkpoint.PARTS:
            if p not in parts:
                shutil.copyfile(Path(init) / f"{p}.safetensors", tmp / f"{p}.safetensors")
