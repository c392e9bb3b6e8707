"""Arithmetic (range) coding of the quantized weights, so that a hypothesis' description length is the size of
a real message that decodes back to it, not an entropy estimate.

The message for L levels and d weights is prefix-free (the decoder always knows where each part ends):

    header    Elias-gamma codes of d, L and the number of 32-bit words of the range-coded stream
    counts    how many weights sit at each level, ceil(log2(d + 1)) bits each: the decoder rebuilds the exact
              same (quantized) categorical model from them
    centres   L float16 values
    stream    the level indices, range-coded with `constriction` under that empirical categorical model

Its length in bits is what the Occam / PAC-Bayes prior charges: P(h) = 2^-bits is a valid prior over all
messages because a prefix-free code satisfies Kraft's inequality.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import constriction
import numpy as np

from paperclub.errors import UserError


@dataclass(frozen=True)
class Encoded:
    levels: int
    counts: tuple[int, ...]  # weights per level
    centres_f16: bytes  # L float16 values, little-endian
    stream: np.ndarray  # uint32 words of the range coder

    @property
    def dim(self) -> int:
        return sum(self.counts)

    def to_dict(self) -> dict:
        """JSON-ready fields (centres and stream in base64)."""
        return {"levels": self.levels, "counts": list(self.counts),
                "centres_f16": base64.b64encode(self.centres_f16).decode(),
                "stream_u32le": base64.b64encode(np.asarray(self.stream, dtype="<u4").tobytes()).decode()}

    @classmethod
    def from_dict(cls, d: dict) -> Encoded:
        """The inverse of `to_dict`; KeyError, TypeError or ValueError (binascii.Error) on a damaged entry."""
        stream = np.frombuffer(base64.b64decode(d["stream_u32le"], validate=True), dtype="<u4").astype(np.uint32)
        return cls(int(d["levels"]), tuple(int(c) for c in d["counts"]),
                   base64.b64decode(d["centres_f16"], validate=True), stream)

    def bits(self) -> dict[str, int]:
        """The message length, part by part, and in total."""
        header = elias_gamma_bits(self.dim) + elias_gamma_bits(self.levels) + elias_gamma_bits(len(self.stream) + 1)
        parts = {
            "header": header,
            "counts": self.levels * math.ceil(math.log2(self.dim + 1)),
            "centres": 16 * self.levels,
            "stream": 32 * len(self.stream),
        }
        return parts | {"total": sum(parts.values())}


def elias_gamma_bits(n: int) -> int:
    """Length of the Elias gamma code of a positive integer: 2 floor(log2 n) + 1."""
    return 2 * (n.bit_length() - 1) + 1


def categorical(counts: np.ndarray) -> constriction.stream.model.Categorical:
    """The model both sides build from the counts; levels with no weight get no probability mass."""
    probs = counts.astype(np.float64) / counts.sum()
    return constriction.stream.model.Categorical(probs, perfect=False)


def encode(indices: np.ndarray, centres_f16: np.ndarray) -> Encoded:
    indices = np.asarray(indices)
    levels = len(centres_f16)
    if indices.ndim != 1 or len(indices) == 0:
        raise UserError("nothing to encode: expected a non-empty 1-d array of level indices")
    if indices.min() < 0 or indices.max() >= levels:
        raise UserError(f"level indices must lie in [0, {levels})")
    counts = np.bincount(indices, minlength=levels)
    coder = constriction.stream.queue.RangeEncoder()
    if np.count_nonzero(counts) > 1:  # one used level: the counts already say everything
        coder.encode(indices.astype(np.int32), categorical(counts))
    return Encoded(levels, tuple(int(c) for c in counts), np.asarray(centres_f16, dtype="<f2").tobytes(),
                   coder.get_compressed().astype(np.uint32))


def decode(enc: Encoded) -> tuple[np.ndarray, np.ndarray]:
    """The level indices and the float16 centres, exactly as encoded."""
    counts = np.asarray(enc.counts, dtype=np.int64)
    centres = np.frombuffer(enc.centres_f16, dtype="<f2")
    if len(counts) != enc.levels or len(centres) != enc.levels or counts.min(initial=0) < 0 or counts.sum() < 1:
        raise UserError("corrupt compressed weights: counts and centres disagree with the number of levels")
    used = np.flatnonzero(counts)
    if len(used) == 1:
        return np.full(enc.dim, used[0], dtype=np.int64), centres
    try:
        decoder = constriction.stream.queue.RangeDecoder(np.asarray(enc.stream, dtype=np.uint32))
        indices = decoder.decode(categorical(counts), enc.dim).astype(np.int64)
    except Exception as e:  # constriction raises its own errors on a damaged stream
        raise UserError(f"corrupt compressed weights: the range-coded stream does not decode ({e})") from None
    if not np.array_equal(np.bincount(indices, minlength=enc.levels), counts):
        raise UserError("corrupt compressed weights: the decoded levels do not match their counts")
    return indices, centres


def empirical_entropy_bits(indices: np.ndarray) -> float:
    """d times the entropy of the indices' empirical distribution: what an ideal coder would need."""
    counts = np.bincount(np.asarray(indices))
    p = counts[counts > 0] / counts.sum()
    return float(-(counts[counts > 0] * np.log2(p)).sum())
