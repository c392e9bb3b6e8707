"""Checkpoint directories: config.json (model config, env, training metadata) + model.safetensors.

Loading checks every part it reads, because a copy cut short, a hand-edited config or weights from another
config must end in one line that names the file and says what to do, not in a traceback from json, safetensors
or torch deep inside the command.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from paperclub.atomic import atomic_path, write_json
from paperclub.errors import UserError
from paperclub.worldmodel.defaults import ENV_DEFAULTS
from paperclub.worldmodel.model import LeWM, LeWMConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
# what to do about a checkpoint that cannot be read: the end of every such message
FIX = "retrain it with `paperclub lewm train --env ENV --out DIR` or point --ckpt at another checkpoint"

T = TypeVar("T")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is no size


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# how a JSON value must look for each annotation of the saved dataclasses (LeWMConfig, TrainConfig)
FIELD_TYPES = {
    "int": ("an integer", _is_int),
    "float": ("a number", _is_number),
    "float | None": ("a number or null", lambda v: v is None or _is_number(v)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "tuple[int, ...]": ("a list of integers", lambda v: isinstance(v, list) and len(v) > 0 and all(map(_is_int, v))),
}


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
    """Model in eval mode and the checkpoint's metadata. A missing, truncated or inconsistent file is a UserError
    that names it."""
    path = Path(path)
    _require_files(path)
    meta = read_meta(path)
    fix = FIX.replace("ENV", meta["env"])
    model = LeWM(saved_section(meta, "model", LeWMConfig, path / CONFIG, fix))
    state = read_weights(path / WEIGHTS, fix)
    check_weights(state, model, path / WEIGHTS, fix)
    model.load_state_dict(state)
    model.eval()
    return model, meta


def _require_files(path: Path) -> None:
    if not path.is_dir():
        raise UserError(
            f"{path} is not a LeWM checkpoint directory (it holds {CONFIG} and {WEIGHTS}): train one with "
            "`paperclub lewm train --env ENV --out DIR` or omit --ckpt to use the shipped one"
        )
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise UserError(f"{path / name} not found: {path} is not a complete LeWM checkpoint; {FIX}")


def read_meta(path: Path, fix: str = FIX) -> dict:
    """The config.json of checkpoint or run directory `path`: a JSON object that names a known env. `fix`: what
    the error message tells the user to do about a corrupt one."""
    file = path / CONFIG
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8, as a cut-short copy leaves it
        raise UserError(f"{file} is truncated or corrupt ({first_line(e)}): {fix}") from e
    if not isinstance(meta, dict):
        raise UserError(f"{file} is corrupt (a JSON {type(meta).__name__}, not an object): {fix}")
    if meta.get("env") not in ENV_DEFAULTS:
        raise UserError(f"{file} is corrupt (\"env\" is {meta.get('env')!r}, not one of "
                        f"{', '.join(sorted(ENV_DEFAULTS))}): {fix}")
    return meta


def saved_section(meta: dict, section: str, cls: type[T], file: Path, fix: str = FIX) -> T:
    """meta[section] as a `cls` dataclass, after checking its field names and value types (LeWMConfig fills the
    fields an older version did not write; see `LeWMConfig.from_saved`)."""
    saved = meta.get(section)
    if not isinstance(saved, dict):
        raise UserError(f"{file} is corrupt (no \"{section}\" settings): {fix}")
    problems = field_problems(cls, saved)
    if problems:
        more = f"; {len(problems) - 3} more" if len(problems) > 3 else ""
        raise UserError(f"{file} is corrupt ({section}: {'; '.join(problems[:3])}{more}): {fix}")
    try:
        return cls.from_saved(saved) if hasattr(cls, "from_saved") else cls(**saved)
    except UserError as e:  # well-typed but inconsistent values: the config's own check says which
        raise UserError(f"{file} is corrupt ({section}: {e}): {fix}") from e


def field_problems(cls: type, saved: dict) -> list[str]:
    """What is wrong with `saved` as the fields of dataclass `cls`: unknown names and values of the wrong type."""
    known = {f.name: f.type for f in fields(cls)}
    problems = [f"unknown field {name!r}" for name in saved if name not in known]
    for name, value in saved.items():
        want = FIELD_TYPES.get(str(known.get(name)))
        if want is not None and not want[1](value):
            problems.append(f"{name} is {json.dumps(value)}, not {want[0]}")
    return problems


def read_weights(file: Path, fix: str = FIX) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as e:  # a cut-short copy fails here, in the header or the data it lists
        raise UserError(f"{file} is truncated or corrupt ({first_line(e)}): {fix}") from e


def check_weights(state: dict[str, torch.Tensor], model: LeWM, file: Path, fix: str = FIX) -> None:
    """The tensors in `file` are exactly those of the model its config.json describes, with finite values:
    torch's own error lists every mismatch over many lines, and NaN weights would only show as NaN results."""
    want = model.state_dict()
    problems = [f"tensor {k} is missing" for k in sorted(want.keys() - state.keys())]
    problems += [f"unexpected tensor {k}" for k in sorted(state.keys() - want.keys())]
    problems += [
        f"{k} is {tuple(state[k].shape)}, the config needs {tuple(want[k].shape)}"
        for k in sorted(want.keys() & state.keys())
        if state[k].shape != want[k].shape
    ]
    if problems:
        more = f"; {len(problems) - 2} more" if len(problems) > 2 else ""
        raise UserError(f"{file} does not match {file.with_name(CONFIG)} ({'; '.join(problems[:2])}{more}): {fix}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"{file} is corrupt ({bad[0]} holds NaN or infinite values): {fix}")


def first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


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
