"""A language model as a message: every weight tensor quantized to its own L-level codebook and range-coded.

The prior fixes the architecture (a `paperclub.models` Llama config) and the order of its tensors; the message is
then the tensors' codes one after another (each prefix-free, `coding.py`), so its length is what the bound pays.
No random seed is involved: unlike a subspace model, this is direct quantization of all of the weights.

On disk: `compressed.json` in a checkpoint folder, format `paperclub-bounds-lm/1`, holding the model config, the
coded tensors (base64), the search-space size and `meta` (corpus fingerprint, training config, command).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from paperclub.atomic import write_json
from paperclub.bounds.checkpoint import read_message
from paperclub.bounds.coding import Encoded, decode
from paperclub.errors import UserError
from paperclub.models.config import ModelConfig
from paperclub.models.llama import Llama

FILE = "compressed.json"
FORMAT = "paperclub-bounds-lm/1"


def parameter_shapes(config: ModelConfig) -> list[tuple[str, torch.Size]]:
    """The model's tensors in message order (tied embeddings appear once)."""
    with torch.device("meta"):
        model = Llama(config, max_positions=1)
    return [(name, p.shape) for name, p in model.named_parameters()]


@dataclass
class CompressedLM:
    config: ModelConfig
    tensors: list[tuple[str, Encoded]]  # in `parameter_shapes` order
    search_space: int = 1

    def __post_init__(self) -> None:
        expected = parameter_shapes(self.config)
        names = [n for n, _ in self.tensors]
        if names != [n for n, _ in expected]:
            raise UserError(f"the coded tensors ({len(names)}) are not those of this architecture "
                            f"({len(expected)}): the checkpoint is for another model")
        for (name, enc), (_, shape) in zip(self.tensors, expected, strict=True):
            if enc.dim != shape.numel():
                raise UserError(f"{name}: {enc.dim} coded weights for a tensor of shape {tuple(shape)}")

    def bits(self) -> dict[str, float]:
        parts = {"tensors": float(sum(enc.bits()["total"] for _, enc in self.tensors)),
                 "search": math.log2(self.search_space)}
        return parts | {"total": parts["tensors"] + parts["search"]}

    def num_params(self) -> int:
        return sum(enc.dim for _, enc in self.tensors)

    def model(self, max_positions: int | None = None) -> Llama:
        """The decoded model in float32: each weight its level's float16 centre, exactly as coded."""
        with torch.device("meta"):
            model = Llama(self.config, max_positions=1)
        model = model.to_empty(device="cpu").float()
        if self.config.tie_word_embeddings:
            model.lm_head.weight = model.embed.weight
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, enc in self.tensors:
                indices, centres = decode(enc)
                values = torch.from_numpy(centres.astype(np.float32))[torch.from_numpy(indices)]
                params[name].copy_(values.view(params[name].shape))
        model.set_rope(max_positions)
        return model.eval().requires_grad_(False)


def save(path: Path, compressed: CompressedLM, meta: dict) -> Path:
    """Write `path/compressed.json` atomically."""
    obj = {
        "format": FORMAT,
        "config": compressed.config.to_dict(),
        "search_space": compressed.search_space,
        "tensors": [{"name": name, **enc.to_dict()} for name, enc in compressed.tensors],
        "bits": compressed.bits(),
        "num_params": compressed.num_params(),
        "meta": meta,
    }
    write_json(Path(path) / FILE, obj, indent=1)
    return Path(path) / FILE


def model_config(d: dict) -> ModelConfig:
    """A model config as `ModelConfig.to_dict` wrote it into a message."""
    return ModelConfig(**{k: v for k, v in d.items() if k not in ("rope_scaling", "eos_token_ids")},
                       rope_scaling=d.get("rope_scaling") or {}, eos_token_ids=tuple(d.get("eos_token_ids") or ()))


def load(path: Path) -> tuple[CompressedLM, dict]:
    """The compressed model in a checkpoint folder (or its compressed.json), and its `meta`."""
    file, obj = read_message(path, FORMAT, "language model", "paperclub bounds lm --train --save DIR")
    try:
        config = model_config(obj["config"])
        tensors = [(t["name"], Encoded.from_dict(t)) for t in obj["tensors"]]
        compressed = CompressedLM(config, tensors, int(obj["search_space"]))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{file} is missing or garbles a field ({e}): the checkpoint is corrupt") from None
    return compressed, obj.get("meta", {})
