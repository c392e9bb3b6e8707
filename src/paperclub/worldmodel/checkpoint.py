"""Checkpoint directories: config.json (model config, env, training metadata) + model.safetensors."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from paperclub.atomic import atomic_path, write_json
from paperclub.errors import UserError
from paperclub.worldmodel.model import LeWM, LeWMConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def shipped_checkpoint(env: str) -> Path:
    """The small trained checkpoint that ships with the package for `env`."""
    return Path(str(resources.files("paperclub.worldmodel") / "checkpoints" / env))


def save_checkpoint(model: LeWM, out: str | os.PathLike, meta: dict) -> None:
    """Write weights and config into directory `out` (each file atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_json(out / CONFIG, {"model": model.cfg.to_dict(), **meta})


def load_checkpoint(path: str | os.PathLike) -> tuple[LeWM, dict]:
    """Model in eval mode and the checkpoint's metadata."""
    path = Path(path)
    if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
        raise UserError(
            f"{path} is not a LeWM checkpoint (needs {CONFIG} and {WEIGHTS}): "
            "train one with `paperclub lewm train --out DIR` or omit --ckpt to use the shipped one"
        )
    meta = json.loads((path / CONFIG).read_text())
    model = LeWM(LeWMConfig.from_saved(meta["model"]))
    model.load_state_dict(load_file(str(path / WEIGHTS)))
    model.eval()
    return model, meta


def resolve_checkpoint(ckpt: str | None, env: str | None) -> Path:
    if ckpt:
        return Path(ckpt)
    if env is None:
        raise UserError("give --ckpt DIR or --env NAME (to use the shipped checkpoint)")
    path = shipped_checkpoint(env)
    if not (path / WEIGHTS).is_file():
        raise UserError(
            f"no shipped checkpoint for {env}: train one with `paperclub lewm train --env {env} "
            "--out DIR` and pass --ckpt DIR"
        )
    return path


def state_dict_size_bytes(model: torch.nn.Module) -> int:
    return sum(v.numel() * v.element_size() for v in model.state_dict().values())
