"""Where models live, and turning a user's `--model` argument into a validated model directory.

Models are cached in `<paperclub_home()>/models/<name>/`, one Hugging Face directory each. A directory
there is complete by construction: conversions are written to a temporary path and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from paperclub.errors import UserError
from paperclub.models import ensemble
from paperclub.models.hf_config import HFConfig, load_config
from paperclub.models.safetensors_stream import read_header

log = logging.getLogger(__name__)

REQUIRED_FOR_INFERENCE = ("config.json", "tokenizer.json")


def paperclub_home() -> Path:
    """`$PAPERCLUB_HOME`, or `~/.cache/paperclub`."""
    env = os.environ.get("PAPERCLUB_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "paperclub"


def models_dir() -> Path:
    return paperclub_home() / "models"


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files holding the weights: from the shard index if there is one."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise UserError(f"{index} is not a valid shard index; re-download the model") from None
        files = [model_dir / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{model_dir} lacks weight shards {missing}; the download is incomplete")
        return files
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(model_dir.glob("*.safetensors"))
    if others:
        return others
    raise UserError(
        f"{model_dir} has no weights (model.safetensors or model.safetensors.index.json); "
        "pass a complete Hugging Face model directory, or a .gguf file to convert"
    )


def validate_model_dir(model_dir: str | os.PathLike, *, check_weights: bool = True) -> HFConfig:
    """Check that `model_dir` is a usable Hugging Face model directory; return its config.

    Raises `UserError` saying what is missing or broken."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(
            f"{model_dir} is not a directory; pass a model directory, a .gguf file or a cached name"
        )
    config = load_config(model_dir)
    if not (model_dir / "tokenizer.json").is_file():
        raise UserError(
            f"{model_dir} has no tokenizer.json; re-convert the model or use a directory that has one"
        )
    if check_weights:
        raw = json.loads((model_dir / "config.json").read_text())  # valid JSON: load_config read it
        folders = ensemble.member_dirs(model_dir, raw) if ensemble.KEY in raw else [model_dir]
        for folder in folders:  # an ensemble's weights are its members'
            for f in weight_files(folder):
                read_header(f)
    return config


def is_complete(model_dir: Path) -> bool:
    try:
        validate_model_dir(model_dir)
    except UserError:
        return False
    return True


def cached_conversion(gguf_path: Path, name: str | None = None, progress: bool = True) -> Path:
    """Convert `gguf_path` into `<home>/models/<name or stem>/` unless a complete conversion of the
    same file is already there."""
    from paperclub.models.gguf_convert import convert_gguf

    out = models_dir() / (name or gguf_path.stem)
    if is_complete(out):
        source = _provenance(out)
        if source.get("source_size") in (None, gguf_path.stat().st_size):
            log.info("using cached conversion %s", out)
            return out
        log.warning("%s was converted from a different file; converting again", out)
    convert_gguf(gguf_path, out, force=True, progress=progress)
    return out


def _provenance(model_dir: Path) -> dict:
    try:
        d = json.loads((model_dir / "paperclub.json").read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


@dataclass
class ModelInfo:
    """One cached model, as `paperclub models list` shows it."""

    name: str
    path: Path
    architecture: str
    parameters: int | None
    dtype: str
    size_bytes: int
    complete: bool
    problem: str = ""


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def describe_model(model_dir: Path) -> ModelInfo:
    try:
        config = validate_model_dir(model_dir, check_weights=True)
        arch = config.model_type
        return ModelInfo(
            model_dir.name,
            model_dir,
            arch,
            config.num_parameters,
            config.torch_dtype,
            dir_size(model_dir),
            True,
        )
    except UserError as e:
        return ModelInfo(model_dir.name, model_dir, "?", None, "?", dir_size(model_dir), False, str(e))


def list_models() -> list[ModelInfo]:
    """The models cached under `<home>/models/` (hidden temporaries skipped), sorted by name."""
    root = models_dir()
    if not root.is_dir():
        return []
    return [describe_model(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def remove_model(name: str) -> None:
    path = models_dir() / name
    if not path.is_dir() or os.sep in name:
        raise UserError(f"no cached model named {name!r}; see `paperclub models list`")
    shutil.rmtree(path)
