"""A compressed classifier on disk: one small JSON file, `compressed.json`, in a checkpoint folder.

It holds the prior (network config, projector, intrinsic dimension, seed), the message (level counts, float16
centres, the range-coded stream in base64) and how it was trained (data, label noise, search-space size). The
file is the hypothesis: loading decodes the message and rebuilds theta0 + P w from the seed.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from paperclub.atomic import write_json
from paperclub.bounds.coding import Encoded
from paperclub.bounds.compress import Compressed
from paperclub.bounds.subspace import SubspaceConfig
from paperclub.errors import UserError

FILE = "compressed.json"
FORMAT = "paperclub-bounds-compressed/1"


def save(path: Path, compressed: Compressed, meta: dict) -> Path:
    """Write `path/compressed.json` atomically; `meta` records how it was made (dataset, label noise, ...)."""
    enc = compressed.encoded
    obj = {
        "format": FORMAT,
        "subspace": compressed.subspace.to_dict(),
        "search_space": compressed.search_space,
        "levels": enc.levels,
        "counts": list(enc.counts),
        "centres_f16": base64.b64encode(enc.centres_f16).decode(),
        "stream_u32le": base64.b64encode(np.asarray(enc.stream, dtype="<u4").tobytes()).decode(),
        "bits": compressed.bits(),
        "meta": meta,
    }
    write_json(Path(path) / FILE, obj)
    return Path(path) / FILE


def load(path: Path) -> tuple[Compressed, dict]:
    """The compressed classifier in a checkpoint folder (or its compressed.json), and its `meta`."""
    path = Path(path)
    file = path / FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"no compressed checkpoint at {path}: expected a folder holding {FILE} "
                        "(`paperclub bounds classify --save DIR` writes one)")
    try:
        obj = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{file} is not valid JSON ({e}): the checkpoint is corrupt or truncated") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"{file} is not a compressed classifier of this version (format {FORMAT!r} expected)")
    try:
        stream = np.frombuffer(base64.b64decode(obj["stream_u32le"], validate=True), dtype="<u4").astype(np.uint32)
        enc = Encoded(int(obj["levels"]), tuple(int(c) for c in obj["counts"]),
                      base64.b64decode(obj["centres_f16"], validate=True), stream)
        compressed = Compressed(SubspaceConfig.from_dict(obj["subspace"]), enc, int(obj["search_space"]))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{file} is missing or garbles a field ({e}): the checkpoint is corrupt") from None
    if enc.dim != compressed.subspace.dim:
        raise UserError(f"{file}: {enc.dim} coded weights for a subspace of dimension {compressed.subspace.dim}")
    return compressed, obj.get("meta", {})
