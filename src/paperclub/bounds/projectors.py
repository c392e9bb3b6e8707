"""Random projectors from a d-dimensional subspace into a network's D parameters: theta = theta0 + P w.

Training only w (Li et al. 2018, "intrinsic dimension") leaves a hypothesis that d numbers describe, given the
seed that drew theta0 and P. P is never stored: a seed regenerates it. Each column has unit expected norm, so one
unit of w moves the weights by about one unit whatever D is.

- `DenseProjector`: P with i.i.d. N(0, 1/D) entries. Exact but D*d floats: for tests and small models.
- `KroneckerProjector`: P = Q1 (x) Q2 with Q1 of shape (D1, d1) and Q2 of shape (D2, d2), D1*D2 >= D and
  d1*d2 = d. P w = vec(Q1 W Q2^T) with W = w reshaped (d1, d2), so a product costs O(D1 d1 d2 + D1 D2 d2) and
  the factors take (D1 d1 + D2 d2) floats instead of D*d. Lotfi et al. (2022) use this one.
"""

from __future__ import annotations

import math

import torch

from paperclub.errors import UserError


class DenseProjector(torch.nn.Module):
    def __init__(self, D: int, d: int, seed: int):
        super().__init__()
        check_dims(D, d)
        g = torch.Generator().manual_seed(seed)
        self.D, self.d = D, d
        self.register_buffer("P", torch.randn(D, d, generator=g) / math.sqrt(D), persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.P @ w


class KroneckerProjector(torch.nn.Module):
    def __init__(self, D: int, d: int, seed: int):
        super().__init__()
        check_dims(D, d)
        self.D, self.d = D, d
        self.d1, self.d2 = balanced_factors(d)
        self.D1 = math.isqrt(D - 1) + 1  # ceil(sqrt(D))
        self.D2 = -(-D // self.D1)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("Q1", torch.randn(self.D1, self.d1, generator=g) / math.sqrt(self.D1), persistent=False)
        self.register_buffer("Q2", torch.randn(self.D2, self.d2, generator=g) / math.sqrt(self.D2), persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        W = w.reshape(self.d1, self.d2)
        return (self.Q1 @ W @ self.Q2.T).reshape(-1)[: self.D]

    def dense(self) -> torch.Tensor:
        """The (D, d) matrix this projector applies (for tests)."""
        return torch.kron(self.Q1, self.Q2)[: self.D]


PROJECTORS = {"kronecker": KroneckerProjector, "dense": DenseProjector}


def make_projector(kind: str, D: int, d: int, seed: int) -> torch.nn.Module:
    if kind not in PROJECTORS:
        raise UserError(f"unknown projector {kind!r}: expected one of {', '.join(PROJECTORS)}")
    return PROJECTORS[kind](D, d, seed)


def check_dims(D: int, d: int) -> None:
    if not 1 <= d <= D:
        raise UserError(f"intrinsic dimension {d}: expected 1 <= d <= {D} (the number of parameters)")


def balanced_factors(d: int) -> tuple[int, int]:
    """d = d1 * d2 with d1 <= d2 as close as possible (a prime d gives 1 x d)."""
    d1 = math.isqrt(d)
    while d % d1:
        d1 -= 1
    return d1, d // d1
