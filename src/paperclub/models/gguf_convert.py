"""Converting a GGUF file (llama.cpp's format) into a Hugging Face model directory.

The output holds `config.json`, `model.safetensors` (float32), `tokenizer.json`, `tokenizer_config.json`,
`generation_config.json` and `paperclub.json` (where it came from). Quantized tensors are dequantized
with `gguf.quants.dequantize`: every supported block format computes `scale * q (+ min)` from fp16
scales and small integers, which float32 represents exactly, so the float32 weights ARE the quantized
model, with no further rounding.

llama.cpp's converter permutes the rows of `attn_q`/`attn_k` (llama only) so that its rotary embedding can
rotate adjacent pairs (x0, x1), where Hugging Face's rotates halves (x0, x_{d/2}). Per head it reorders
rows from (2, d/2) to (d/2, 2); we undo that with the inverse reshape.

Tensors are processed one at a time and streamed into the safetensors file, so peak memory is about
one dequantized tensor plus the memory-mapped input.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paperclub.atomic import atomic_path
from paperclub.errors import UserError
from paperclub.models.gguf_tokenizer import build_tokenizer
from paperclub.models.hf_config import HFConfig
from paperclub.models.safetensors_stream import TensorSpec, write_streaming

log = logging.getLogger(__name__)

CONVERTER_VERSION = 1
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


def hf_tensor_name(gguf_name: str) -> str | None:
    """The Hugging Face name for a GGUF tensor name, or None for tensors HF does not store."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _BLOCK.match(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    return None


def gguf_tensor_name(hf_name: str) -> str | None:
    """The GGUF name for a Hugging Face tensor name (the inverse of `hf_tensor_name`), or None."""
    for gguf_name, name in _GLOBAL_NAMES.items():
        if name == hf_name:
            return gguf_name
    parts = hf_name.split(".", 3)  # model, layers, N, rest
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        for gguf_name, name in _LAYER_NAMES.items():
            if name == parts[3]:
                return f"blk.{parts[2]}.{gguf_name}"
    return None


def permute_for_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's converter does to HF q/k rows (weight or bias): per head, (2, d/2) -> (d/2, 2)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_from_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_for_gguf`: GGUF q/k rows back to Hugging Face order."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass
class ConversionResult:
    out_dir: Path
    config: HFConfig
    seconds: float
    bytes_written: int


def read_metadata(reader: Any) -> dict[str, Any]:
    """All GGUF key/value fields as Python values (strings, numbers, lists)."""
    meta: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            meta[key] = f.contents()
        except Exception as e:  # an exotic field type: not one we need
            log.debug("skipping GGUF field %s: %s", key, e)
    return meta


def open_gguf(path: str | os.PathLike) -> Any:
    """A `gguf.GGUFReader` for `path`, with `UserError` for files that are not GGUF."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass an existing .gguf file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise UserError(f"{path} is not a GGUF file (it does not start with the GGUF magic); check the path")
    try:
        return gguf.GGUFReader(path, "r")
    except Exception:
        raise UserError(f"{path} is truncated or corrupt: its GGUF header or tensors do not fit the file; "
                        "re-download it") from None


def config_from_metadata(meta: dict[str, Any], tensor_names: set[str]) -> HFConfig:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UserError(
            f"GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )

    def get(key: str, default: Any = None) -> Any:
        v = meta.get(f"{arch}.{key}", default)
        if v is None:
            raise UserError(f"GGUF metadata lacks {arch}.{key}; the file is incomplete")
        return v

    hidden = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    kv_heads = int(get("attention.head_count_kv", heads))
    head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
    n_vocab = int(meta.get(f"{arch}.vocab_size", len(meta.get("tokenizer.ggml.tokens", []))))
    if not n_vocab:
        raise UserError("GGUF metadata gives no vocabulary size and no tokens; the file is incomplete")
    rope_scaling = None
    kind = meta.get(f"{arch}.rope.scaling.type")
    if kind in ("linear", "yarn"):
        rope_scaling = {"rope_type": kind, "factor": float(get("rope.scaling.factor"))}
        if kind == "yarn":
            original = int(get("rope.scaling.original_context_length"))
            rope_scaling["original_max_position_embeddings"] = original
    if "rope_freqs.weight" in tensor_names:
        raise UserError(
            "this GGUF uses llama3-style rope frequency factors (rope_freqs), which are not supported yet"
        )
    eos = meta.get("tokenizer.ggml.eos_token_id")
    has_bias = any(n.endswith("attn_q.bias") for n in tensor_names)
    return HFConfig(
        model_type=arch,
        vocab_size=n_vocab,
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_hidden_layers=int(get("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=int(get("context_length", 2048)),
        rms_norm_eps=float(np.float32(get("attention.layer_norm_rms_epsilon", 1e-6))),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=rope_scaling,
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias=has_bias and arch == "llama",
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=eos,
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
        torch_dtype="float32",
    )


def _round_eps(x: float) -> float:
    """1e-5 stored as float32 reads back as 9.99999974e-06; write the short decimal that rounds to it."""
    for digits in range(1, 10):
        s = float(f"{x:.{digits}g}")
        if np.float32(s) == np.float32(x):
            return s
    return x


def convert_gguf(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
    progress: bool = False,
    on_tensor: Callable[[str], None] | None = None,
) -> ConversionResult:
    """Convert `gguf_path` into a Hugging Face directory at `out_dir`, atomically.

    `out_dir` must not exist unless `force` (then it is replaced only once the new one is complete).
    `progress` shows a tqdm bar; `on_tensor(name)` is called after each tensor (for tests)."""
    from gguf.quants import dequantize

    t0 = time.perf_counter()
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if out_dir.exists() and not force:
        raise UserError(f"{out_dir} already exists; choose another --out or pass --force to replace it")
    reader = open_gguf(gguf_path)
    meta = read_metadata(reader)
    tensors = {t.name: t for t in reader.tensors}
    config = config_from_metadata(meta, set(tensors))
    config.rms_norm_eps = _round_eps(config.rms_norm_eps)
    permute = config.model_type == "llama"  # llama.cpp permutes q/k for llama only (qwen2 is NEOX-style)

    specs: dict[str, TensorSpec] = {}
    sources: dict[str, Any] = {}
    for name, t in tensors.items():
        hf = hf_tensor_name(name)
        if hf is None:
            log.warning("ignoring GGUF tensor %s (no Hugging Face counterpart)", name)
            continue
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # GGUF lists dims fastest-first
        specs[hf] = TensorSpec(hf, shape, np.dtype(np.float32))
        sources[hf] = t
    missing = [n for n in ("model.embed_tokens.weight", "model.norm.weight") if n not in specs]
    if missing:
        raise UserError(f"{gguf_path} lacks tensors {missing}; it is not a complete language model")
    if specs["model.embed_tokens.weight"].shape != (config.vocab_size, config.hidden_size):
        raise UserError(
            f"{gguf_path}: token embedding has shape {specs['model.embed_tokens.weight'].shape}, "
            f"metadata says ({config.vocab_size}, {config.hidden_size}); the file is inconsistent"
        )

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(specs), desc=f"converting {gguf_path.name}", unit="tensor", leave=False)

    def produce(spec: TensorSpec) -> np.ndarray:
        t = sources[spec.name]
        w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False).reshape(spec.shape)
        if permute and (".q_proj." in spec.name or ".k_proj." in spec.name):
            n = config.num_attention_heads if ".q_proj." in spec.name else config.num_key_value_heads
            w = unpermute_from_gguf(w, n)
        if bar is not None:
            bar.update(1)
        if on_tensor is not None:
            on_tensor(spec.name)
        return w

    meta["_context_length"] = config.max_position_embeddings
    tok_files = build_tokenizer(meta)
    eos_ids = sorted({i for i in [config.eos_token_id] if isinstance(i, int)})
    template = tok_files.config.get("chat_template") or ""
    for tok in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):  # the chat turn terminator, when there is one
        tid = tok_files.tokenizer.token_to_id(tok)
        if tid is not None and tok in template:
            eos_ids = sorted(set(eos_ids) | {tid})
    generation = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids,
        "pad_token_id": config.pad_token_id,
    }
    provenance = {
        "converter": "paperclub.models.gguf_convert",
        "converter_version": CONVERTER_VERSION,
        "source": str(gguf_path.resolve()),
        "source_size": gguf_path.stat().st_size,
        "source_name": meta.get("general.name"),
        "dtype_note": "float32 holds the dequantized GGUF weights exactly (no rounding beyond quantization)",
        "file_types": sorted({t.tensor_type.name for t in sources.values()}),
    }

    log.info("converting %s (%d tensors) -> %s", gguf_path, len(specs), out_dir)
    try:
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            size = write_streaming(
                tmp / "model.safetensors", specs.values(), produce, metadata={"format": "pt"}
            )
            _write_json(tmp / "config.json", config.to_hf_dict())
            _write_json(tmp / "generation_config.json", generation)
            _write_json(tmp / "tokenizer_config.json", tok_files.config)
            tok_files.tokenizer.save(str(tmp / "tokenizer.json"))
            _write_json(tmp / "paperclub.json", provenance)
            (tmp / "README.md").write_text(_readme(gguf_path, config, provenance["file_types"]))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    log.info("converted %s in %.1f s (%.0f MB)", gguf_path.name, seconds, size / 1e6)
    return ConversionResult(out_dir, config, seconds, size)


def _readme(gguf_path: Path, config: HFConfig, file_types: list[str]) -> str:
    shape = f"{config.num_hidden_layers} layers, hidden size {config.hidden_size}"
    return (
        f"# {gguf_path.stem}\n\n"
        f"Converted by paperclub from `{gguf_path.name}` ({', '.join(file_types)} tensors).\n\n"
        "The weights are stored as float32. F16, Q8_0 and Q4_1 blocks decode as\n"
        "`fp16 scale * small integer (+ fp16 offset)`, which float32 holds exactly (checked element by\n"
        "element against float64 for SmolLM2-135M-Instruct.Q4_1): these are the quantized model's\n"
        "weights with no further rounding, not a recovery of the original precision.\n\n"
        f"Architecture {config.model_type}, {shape}, {config.num_parameters:,} parameters.\n"
    )


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
