"""A D-MPC checkpoint directory: proposal/dynamics/value .safetensors (EMA weights, the ones evaluated),
config.json (model config with env, horizon F and history length, the normalizers, training facts), and
train_state.pt (raw weights, EMA and optimizer state: what resuming needs; not needed to plan).

The baselines (MBOP, behaviour cloning, the distilled policy) keep the same layout: one .safetensors per part and a
config.json whose `format` names the kind; `read_config(path, kind)` refuses a checkpoint of another kind with a
line that says which planner takes it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from paperclub.dmpc.models import ModelConfig, Normalizers, TrajectoryModel
from paperclub.errors import UserError

PARTS = ("proposal", "dynamics", "value")
FORMAT = "paperclub.dmpc.checkpoint/1"
# kind -> (format, the command that makes one)
KINDS = {"dmpc": (FORMAT, "paperclub dmpc train"),
         "mbop": ("paperclub.dmpc.mbop/1", "paperclub dmpc train-mbop"),
         "bc": ("paperclub.dmpc.bc/1", "paperclub dmpc train-bc"),
         "distilled": ("paperclub.dmpc.distilled/1", "paperclub dmpc distill")}
NAMES = {"dmpc": "a D-MPC", "mbop": "an MBOP", "bc": "a behaviour-cloning", "distilled": "a distilled-policy"}


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


def read_config(path: Path, kind: str = "dmpc") -> dict:
    """config.json of a checkpoint of `kind` (dmpc, mbop, bc, distilled); another kind is a clear error."""
    path = Path(path)
    fmt, command = KINDS[kind]
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not {NAMES[kind]} checkpoint (no config.json): make one with `{command}`")
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}/config.json is not valid JSON ({e}): the checkpoint is corrupt; retrain it") from e
    found = config.get("format")
    if found != fmt:
        other = next((k for k, (f, _) in KINDS.items() if f == found), None)
        if other is not None:
            raise UserError(f"{path} is {NAMES[other]} checkpoint, not {NAMES[kind]} one: evaluate it with "
                            f"--planner {other}, or pass a checkpoint from `{command}`")
        raise UserError(f"{path} has format {found!r}, not {fmt!r}: retrain it with `{command}`")
    return config


def write_parts(tmp: Path, parts: dict[str, torch.nn.Module], config: dict) -> None:
    """A baseline checkpoint into the (fresh) directory `tmp`: one .safetensors per part and config.json; the
    caller renames `tmp` into place atomically (paperclub.atomic.atomic_path)."""
    from safetensors.torch import save_file

    tmp.mkdir(parents=True, exist_ok=True)
    for name, module in parts.items():
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, tmp / f"{name}.safetensors")
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_parts(path: Path, parts: dict[str, torch.nn.Module]) -> None:
    """Load each part's weights from `path`/<name>.safetensors, with clear errors for missing or corrupt files."""
    from safetensors.torch import load_file

    for name, module in parts.items():
        file = Path(path) / f"{name}.safetensors"
        if not file.is_file():
            raise UserError(f"checkpoint {path} lacks {file.name}: it is incomplete; retrain it")
        try:
            module.load_state_dict(load_file(file))
        except Exception as e:  # safetensors raises its own error types on truncated files
            raise UserError(f"checkpoint {file} cannot be loaded ({e.__class__.__name__}): retrain it") from e


def check_env(path: Path, trained_for: str, env: str | None) -> None:
    if env is not None and trained_for != env:
        raise UserError(f"checkpoint {path} was trained for env {trained_for}, not {env}: pass --env {trained_for} "
                        f"or a {env} checkpoint")


def load(path: str | Path, env: str | None = None) -> tuple[TrajectoryModel, dict]:
    """The model (eval mode, EMA weights) and config.json; with `env`, the checkpoint must be for that env."""
    path = Path(path)
    config = read_config(path)
    cfg = ModelConfig.from_dict(config["model"])
    check_env(path, cfg.env, env)
    model = TrajectoryModel(cfg, Normalizers.from_dict(config["normalizers"]))
    load_parts(path, {name: getattr(model, name) for name in PARTS})
    return model.eval(), config


def shipped(env: str, kind: str) -> Path | None:
    """The checkpoint of `kind` that ships with the package for `env` (trained on our ENV-medium data; the commands
    that made them are in checkpoints/README.md), or None."""
    from importlib import resources

    path = Path(str(resources.files("paperclub.dmpc") / "checkpoints" / env / kind))
    return path if (path / "config.json").is_file() else None
