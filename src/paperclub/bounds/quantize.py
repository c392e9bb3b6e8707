"""Quantizing the subspace weights w to L levels with a learned codebook.

1. k-means in one dimension (Lloyd's algorithm from quantile starts) gives L centres c and each weight's
   nearest centre.
2. Quantization-aware fine-tuning: the forward pass uses the quantized weights c[a(w)], where a(w) assigns each
   weight to its nearest centre; the backward pass is straight-through, so the loss trains both the centres
   (through the lookup) and the full-precision w underneath (as if quantization were the identity).
3. The centres are stored as float16, and the model is evaluated with exactly those float16 values: what is
   bounded is what is encoded.
"""

from __future__ import annotations

import torch

from paperclub.errors import UserError


def kmeans_1d(values: torch.Tensor, levels: int, iters: int = 50) -> torch.Tensor:
    """L sorted centres minimizing the squared distance of `values` to their nearest centre (a local optimum)."""
    if levels < 1:
        raise UserError(f"--levels {levels}: expected at least 1")
    v = values.detach().double().reshape(-1)
    centres = torch.quantile(v, torch.linspace(0, 1, levels + 2, dtype=torch.float64)[1:-1])
    for _ in range(iters):
        a = assign(v, centres)
        sums = torch.zeros(levels, dtype=torch.float64).index_add_(0, a, v)
        counts = torch.bincount(a, minlength=levels).double()
        moved = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        if torch.equal(moved, centres):
            break
        centres = moved
    return centres.sort().values.float()


def assign(values: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of each value's nearest centre (ties to the lower index)."""
    return (values.reshape(-1, 1) - centres.reshape(1, -1)).abs().argmin(dim=1)


def straight_through(w: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Forward: each weight replaced by its nearest centre. Backward: d/dw is the identity, d/dc sums the
    gradients of the weights assigned to each centre."""
    q = centres[assign(w.detach(), centres.detach())]
    return q + (w - w.detach())


def as_float16(centres: torch.Tensor) -> torch.Tensor:
    """The centres as they are stored (float16), back in float32 for computing."""
    return centres.detach().half().float()
