"""`linear(x, w, b)`: the engine's matmul: the batch-invariant CPU kernel where it applies (see
`cpu_kernels.py`), else `torch.nn.functional.linear`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from paperclub.nn.cpu_kernels import cpu_kernel, usable


def packed(w: torch.Tensor) -> torch.Tensor:
    """`w` in the layout the CPU kernel reads fastest (panels of output columns on the AVX-512 and AVX2 builds; `w`
    itself on the AVX-512 BF16 build). Packed once and kept on the tensor; packed again after `w` is changed in
    place (its version counter moves: loading, an optimizer step), so the copy is never stale."""
    # What identifies w's values: its storage (`.to()` and `.data =` swap it under the same Parameter; a new dtype or
    # shape means new storage) and its version (in-place writes). An inference tensor has no version counter; it
    # cannot be changed outside inference mode.
    try:
        key = (w.data_ptr(), w._version)
    except RuntimeError:
        key = (w.data_ptr(), "inference")
    cached = w.__dict__.get("_paperclub_packed")
    if cached is not None and cached[0] == key:
        return w if cached[1] is None else cached[1]
    p = cpu_kernel().pack(w.detach().contiguous())
    same = p.data_ptr() == w.data_ptr()  # this build reads w as it is
    w._paperclub_packed = (key, None if same else p)
    return w if same else p


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    if w.shape[1] % (32 if x.dtype == torch.bfloat16 else 16) or not usable(x, w):
        return F.linear(x, w, b)
    lead, n = x.shape[:-1], w.shape[0]
    y = cpu_kernel().linear(x.reshape(-1, x.shape[-1]).contiguous(), packed(w), b)
    if y.shape[1] != n:  # packed panels round N up
        y = y[:, :n]
    return y.reshape(*lead, n)
