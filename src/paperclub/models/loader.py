"""Load Hugging Face checkpoints (safetensors, single or sharded) into `Llama`, fusing qkv and gate/up.

Tensors are read one at a time and cast straight to the target dtype, so peak memory stays near the size
of the model in that dtype.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from paperclub.errors import UserError
from paperclub.models import ensemble
from paperclub.models.config import ModelConfig
from paperclub.models.llama import Llama
from paperclub.models.safetensors_stream import read_tensors
from paperclub.models.store import weight_files

log = logging.getLogger(__name__)

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
# HF name inside a layer -> (our name, index of this part in a fused tensor or None)
_LAYER_MAP = {
    "input_layernorm.weight": ("attn_norm.weight", None),
    "post_attention_layernorm.weight": ("mlp_norm.weight", None),
    "self_attn.q_proj.weight": ("attn.qkv.weight", 0),
    "self_attn.k_proj.weight": ("attn.qkv.weight", 1),
    "self_attn.v_proj.weight": ("attn.qkv.weight", 2),
    "self_attn.q_proj.bias": ("attn.qkv.bias", 0),
    "self_attn.k_proj.bias": ("attn.qkv.bias", 1),
    "self_attn.v_proj.bias": ("attn.qkv.bias", 2),
    "self_attn.o_proj.weight": ("attn.o.weight", None),
    "self_attn.o_proj.bias": ("attn.o.bias", None),
    "self_attn.q_norm.weight": ("attn.q_norm.weight", None),
    "self_attn.k_norm.weight": ("attn.k_norm.weight", None),
    "mlp.gate_proj.weight": ("mlp.gate_up.weight", 0),
    "mlp.up_proj.weight": ("mlp.gate_up.weight", 1),
    "mlp.down_proj.weight": ("mlp.down.weight", None),
}
_TOP_MAP = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight",
            "lm_head.weight": "lm_head.weight"}
_PARTS = {"attn.qkv.weight": 3, "attn.qkv.bias": 3, "mlp.gate_up.weight": 2}


def hf_tensors(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    for path in weight_files(Path(model_dir)):
        try:
            yield from read_tensors(path)
        except OSError as e:
            raise UserError(f"cannot read {path} ({e}): re-download or re-convert the model") from e


def load_hf_weights(model: Llama, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy HF-named tensors into `model` (in place, casting to the model's dtype and device)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    pending: dict[str, list[torch.Tensor | None]] = {}
    seen: set[str] = set()
    for hf_name, tensor in tensors:
        m = _LAYER.fullmatch(hf_name)
        if m:
            if m.group(2) not in _LAYER_MAP:
                if m.group(2).endswith("rotary_emb.inv_freq"):
                    continue
                raise UserError(f"unexpected tensor {hf_name}: this checkpoint is not a supported Llama-family model")
            sub, part = _LAYER_MAP[m.group(2)]
            name = f"layers.{m.group(1)}.{sub}"
        elif hf_name in _TOP_MAP:
            name, part = _TOP_MAP[hf_name], None
            if name == "lm_head.weight" and model.cfg.tie_word_embeddings:
                continue
        else:
            raise UserError(f"unexpected tensor {hf_name}: this checkpoint is not a supported Llama-family model")
        if name not in params:
            raise UserError(f"tensor {hf_name} does not fit the config: check config.json against the weights")
        if part is not None:
            parts = pending.setdefault(name, [None] * _PARTS[name.split(".", 2)[2]])
            parts[part] = tensor.to(model.dtype)
            if any(p is None for p in parts):
                continue
            tensor = torch.cat(parts, dim=0)  # type: ignore[arg-type]
            del pending[name]
        _assign(params[name], tensor, hf_name)
        seen.add(name)
    expected = {n for n in params if not (n == "lm_head.weight" and model.cfg.tie_word_embeddings)}
    missing = sorted(expected - seen)
    if missing:
        raise UserError(f"checkpoint lacks {len(missing)} tensors (e.g. {missing[0]}): the weights are incomplete")


def _assign(param: torch.nn.Parameter, tensor: torch.Tensor, hf_name: str) -> None:
    if param.shape != tensor.shape:
        raise UserError(
            f"tensor {hf_name} has shape {tuple(tensor.shape)} but config.json implies {tuple(param.shape)}"
        )
    with torch.no_grad():
        param.copy_(tensor.to(param.dtype))


def load_model(
    model_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    max_positions: int | None = None,
) -> Llama:
    cfg = ModelConfig.from_dir(model_dir)  # a missing or malformed config.json is a UserError here
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if ensemble.KEY in config:  # K members served as one model (`ensemble.py`)
        members = [load_model(d, device, dtype, max_positions) for d in ensemble.member_dirs(Path(model_dir), config)]
        return ensemble.LogitEnsemble(members).eval().requires_grad_(False)
    files = weight_files(Path(model_dir))
    log.info("loading %s (%d file(s)) as %s on %s", model_dir, len(files), dtype, device)
    with torch.device("meta"):
        model = Llama(cfg, max_positions=1)
    model = model.to_empty(device=device).to(dtype)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    load_hf_weights(model, hf_tensors(model_dir))
    model.set_rope(max_positions)
    return model.eval().requires_grad_(False)
