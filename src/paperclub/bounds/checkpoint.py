"""A compressed classifier on disk: one small JSON file, `compressed.json`, in a checkpoint folder.

It holds the prior (network config, projector, intrinsic dimension, seed), the message (level counts, float16
centres, the range-coded stream in base64) and how it was trained (data, label noise, search-space size). The
file is the hypothesis: loading decodes the message and rebuilds theta0 + P w from the seed. A checkpoint with a
data-dependent prior (`prior.py`) also holds theta0 in `prior.safetensors`, and its JSON the split it came from.
"""

from __future__ import annotations

import json
from pathlib import Path

from paperclub.atomic import write_json
from paperclub.bounds import prior as priors
from paperclub.bounds.coding import Encoded
from paperclub.bounds.compress import Compressed
from paperclub.bounds.subspace import SubspaceConfig
from paperclub.errors import UserError

FILE = "compressed.json"
FORMAT = "paperclub-bounds-compressed/1"


def save(path: Path, compressed: Compressed, meta: dict) -> Path:
    """Write `path/compressed.json` atomically; `meta` records how it was made (dataset, label noise, ...)."""
    obj = {
        "format": FORMAT,
        "subspace": compressed.subspace.to_dict(),
        "search_space": compressed.search_space,
        **compressed.encoded.to_dict(),
        "bits": compressed.bits(),
        "meta": meta,
    }
    if compressed.prior is not None:
        obj["prior"] = compressed.prior.to_dict()
        priors.save(Path(path), compressed.prior)  # before the JSON: a JSON naming a prior always finds it
    else:
        (Path(path) / priors.FILE).unlink(missing_ok=True)
    write_json(Path(path) / FILE, obj)
    return Path(path) / FILE


def read_message(path: Path, fmt: str, kind: str, how: str) -> tuple[Path, dict]:
    """The JSON object in a checkpoint folder's compressed.json (or that file), checked to be of format `fmt`;
    a one-line UserError naming the file otherwise. `kind` and `how` (the command that writes one) go in it."""
    path = Path(path)
    file = path / FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"no compressed {kind} at {path}: expected a folder holding {FILE} (`{how}` writes one)")
    try:
        obj = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{file} is not valid JSON ({e}): the checkpoint is corrupt or truncated") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise UserError(f"{file} is not a compressed {kind} of this version (format {fmt!r} expected)")
    return file, obj


def load(path: Path) -> tuple[Compressed, dict]:
    """The compressed classifier in a checkpoint folder (or its compressed.json), and its `meta`."""
    file, obj = read_message(path, FORMAT, "classifier", "paperclub bounds classify --train --save DIR")
    try:
        enc = Encoded.from_dict(obj)
        compressed = Compressed(SubspaceConfig.from_dict(obj["subspace"]), enc, int(obj["search_space"]))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{file} is missing or garbles a field ({e}): the checkpoint is corrupt") from None
    if enc.dim != compressed.subspace.dim:
        raise UserError(f"{file}: {enc.dim} coded weights for a subspace of dimension {compressed.subspace.dim}")
    if isinstance(obj.get("prior"), dict):
        compressed.prior = priors.load(file.parent, obj["prior"], compressed.subspace.net)
    return compressed, obj.get("meta", {})
