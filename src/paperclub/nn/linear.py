"""`linear(x, w, b)`: the engine's matmul: the batch-invariant CPU kernel where it applies (see
`cpu_kernels.py`), else `torch.nn.functional.linear`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from paperclub.nn.cpu_kernels import cpu_kernel, usable


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    if w.shape[1] % (32 if x.dtype == torch.bfloat16 else 16) or not usable(x, w):
        return F.linear(x, w, b)
    lead = x.shape[:-1]
    y = cpu_kernel().linear(x.reshape(-1, x.shape[-1]).contiguous(), w.contiguous(), b)
    return y.view(*lead, w.shape[0])
