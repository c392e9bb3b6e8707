"""What a `--model` argument names: the default model, a model directory, a GGUF file or a cached name."""

from __future__ import annotations

import os
from pathlib import Path

from paperclub.errors import UserError
from paperclub.models.default_model import ensure_default_model
from paperclub.models.store import cached_conversion, list_models, models_dir, validate_model_dir


def resolve_model(spec: str | os.PathLike | None) -> Path:
    """The model directory for a `--model` argument.

    - None: the default model (downloaded and converted on first use);
    - a directory: validated as a Hugging Face model directory;
    - a `.gguf` file: converted once into `<home>/models/<stem>/` and re-used afterwards;
    - a name: a model cached in `<home>/models/<name>/` (see `paperclub models list`)."""
    if spec is None or str(spec) == "":
        return ensure_default_model()
    path = Path(spec).expanduser()
    if path.is_dir():
        validate_model_dir(path)
        return path.resolve()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserError(f"{path} is a file but not a .gguf; pass a model directory or a .gguf file")
        return cached_conversion(path)
    cached = models_dir() / str(spec)
    if os.sep not in str(spec) and cached.is_dir():
        validate_model_dir(cached)
        return cached
    raise UserError(
        f"model {str(spec)!r} not found: not a directory, a .gguf file, or a cached model name "
        f"(cached: {', '.join(m.name for m in list_models()) or 'none'})"
    )
