"""A D-MPC checkpoint directory: proposal/dynamics/value .safetensors (EMA weights, the ones evaluated),
config.json (model config with env, horizon F and history length, the normalizers, training facts), and
train_state.pt (raw weights, EMA and optimizer state: what resuming needs; not needed to plan)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from paperclub.dmpc.models import ModelConfig, Normalizers, TrajectoryModel
from paperclub.errors import UserError

PARTS = ("proposal", "dynamics", "value")
FORMAT = "paperclub.dmpc.checkpoint/1"


def write(tmp: Path, model: TrajectoryModel, meta: dict, train_state: dict | None = None,
          parts: tuple[str, ...] = PARTS) -> None:
    """Fill the (fresh) directory `tmp` with `model`'s `parts`; the caller renames it into place atomically."""
    from safetensors.torch import save_file

    tmp.mkdir(parents=True, exist_ok=True)
    for name in parts:
        state = {k: v.detach().contiguous() for k, v in getattr(model, name).state_dict().items()}
        save_file(state, tmp / f"{name}.safetensors")
    config = {"format": FORMAT, "model": model.cfg.to_dict(), "normalizers": model.norms.to_dict(), **meta}
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if train_state is not None:
        torch.save(train_state, tmp / "train_state.pt")


def read_config(path: Path) -> dict:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a D-MPC checkpoint (no config.json): train one with `paperclub dmpc train`")
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}/config.json is not valid JSON ({e}): the checkpoint is corrupt; retrain it") from e
    if config.get("format") != FORMAT:
        raise UserError(f"{path} has format {config.get('format')!r}, not {FORMAT!r}: retrain it")
    return config


def load(path: str | Path, env: str | None = None) -> tuple[TrajectoryModel, dict]:
    """The model (eval mode, EMA weights) and config.json; with `env`, the checkpoint must be for that env."""
    from safetensors.torch import load_file

    path = Path(path)
    config = read_config(path)
    cfg = ModelConfig.from_dict(config["model"])
    if env is not None and cfg.env != env:
        raise UserError(f"checkpoint {path} was trained for env {cfg.env}, not {env}: pass --env {cfg.env} or a "
                        f"{env} checkpoint")
    model = TrajectoryModel(cfg, Normalizers.from_dict(config["normalizers"]))
    for name in PARTS:
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise UserError(f"checkpoint {path} lacks {file.name}: it is incomplete; retrain it")
        try:
            getattr(model, name).load_state_dict(load_file(file))
        except Exception as e:  # safetensors raises its own error types on truncated files
            raise UserError(f"checkpoint {file} cannot be loaded ({e.__class__.__name__}): retrain it") from e
    return model.eval(), config
