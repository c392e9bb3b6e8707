"""Writing and checking `.safetensors` files one tensor at a time.

`safetensors.numpy.save_file` wants every tensor in memory at once. A converted checkpoint can be far
larger than the quantized file it came from, so we write the format directly: the header is computable
from names, dtypes and shapes alone, and each tensor's bytes are then produced and written in turn.

Format: 8-byte little-endian header length N, N bytes of JSON (padded with spaces to a multiple of 8),
then the raw little-endian tensor bytes at the offsets the header gives.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paperclub.errors import UserError

_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.float64): "F64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int64): "I64",
    np.dtype(np.uint8): "U8",
}
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I32": 4, "I64": 8, "U8": 1, "I8": 1, "BOOL": 1}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorSpec:
    """What the header needs to know about one tensor before its data exists."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def write_streaming(
    path: str | os.PathLike,
    specs: Iterable[TensorSpec],
    produce: Callable[[TensorSpec], np.ndarray],
    metadata: dict[str, str] | None = None,
) -> int:
    """Write `specs` to `path`, calling `produce(spec)` for each tensor's data in header order.

    Only one tensor's data is alive at a time. Returns the file size in bytes."""
    specs = sorted(specs, key=lambda s: s.name)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for spec in specs:
        if spec.dtype not in _DTYPES:
            raise ValueError(f"{spec.name}: dtype {spec.dtype} is not supported by this writer")
        header[spec.name] = {
            "dtype": _DTYPES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for spec in specs:
            data = np.ascontiguousarray(produce(spec), dtype=spec.dtype.newbyteorder("<"))
            if data.shape != spec.shape:
                raise ValueError(f"{spec.name}: produced shape {data.shape}, header says {spec.shape}")
            f.write(memoryview(data).cast("B"))
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


def read_header(path: str | os.PathLike) -> dict[str, dict]:
    """The tensor entries of a safetensors header, after checking that they fit the file.

    Raises `UserError` naming the file if it is truncated or its header is not valid."""
    path = Path(path)
    size = path.stat().st_size
    hint = f"{path} is not a valid safetensors file"
    fix = "re-download or re-convert the model"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UserError(f"{hint} (shorter than 8 bytes); {fix}")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER):
            raise UserError(f"{hint} (header length {n} does not fit a {size}-byte file); {fix}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{hint} (header is not JSON: {e}); {fix}") from None
    if not isinstance(header, dict):
        raise UserError(f"{hint} (header is not a JSON object); {fix}")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    for name, entry in header.items():
        try:
            begin, end = entry["data_offsets"]
            count = int(np.prod(entry["shape"], dtype=np.int64))
            expected = count * _ITEMSIZE[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{hint} (bad header entry for {name!r}); {fix}") from None
        if not 0 <= begin <= end <= data_size or end - begin != expected:
            raise UserError(f"{hint} (tensor {name!r} lies outside the file: truncated?); {fix}")
    return header


_TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I32": "int32",
                 "I64": "int64", "U8": "uint8", "I8": "int8", "BOOL": "bool"}


def read_tensors(path: str | os.PathLike):
    """Yield (name, torch tensor) for every tensor in file order, reading each with plain file reads.

    Unlike a memory map, nothing stays resident after a tensor is consumed: loading an fp32 checkpoint
    into a bf16 model peaks at the bf16 model plus one fp32 tensor, not plus the whole file."""
    import torch

    header = read_header(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        base = 8 + n
        for name, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            begin, end = entry["data_offsets"]
            dtype = getattr(torch, _TORCH_DTYPES[entry["dtype"]])
            out = torch.empty(entry["shape"], dtype=dtype)
            f.seek(base + begin)
            view = out.view(-1).view(torch.uint8) if out.numel() else None
            if view is not None and f.readinto(memoryview(view.numpy())) != end - begin:
                raise UserError(f"{path} is truncated at tensor {name!r}; re-download or re-convert the model")
            yield name, out
