"""Generalization bounds for a hypothesis that a prefix-free message of `bits` bits describes.

With a prior P(h) = 2^-bits(h) (valid by Kraft's inequality) and the point-mass posterior Q on the one trained
hypothesis h, KL(Q || P) = bits(h) ln 2 nats. Each bound below holds with probability at least 1 - delta over
the draw of n i.i.d. training points, for every h at once; e is the true 0-1 error, e_hat the training error.

- Occam (countable hypotheses, Langford's kl form):
      kl(e_hat || e) <= (bits ln 2 + ln(1/delta)) / n,   so   e <= kl^-1(e_hat, that right-hand side)
  where kl(q || p) = q ln(q/p) + (1-q) ln((1-q)/(1-p)).
- McAllester (with Maurer's constant):
      e <= e_hat + sqrt((KL + ln(2 sqrt(n) / delta)) / (2n))
- Catoni, for a fixed C > 0:
      e <= (1 - exp(-C e_hat - (KL + ln(1/delta)) / n)) / (1 - exp(-C))
  optimized over a grid of G values of C; the grid is paid for by a union bound (delta / G for each C).

`certify` reports all three, each at delta / 3, so that the smallest of them holds at delta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from paperclub.errors import UserError

LN2 = math.log(2.0)
CATONI_GRID = tuple(2.0 ** (k / 2) for k in range(-8, 17))  # C from 1/16 to 256, 25 values


def check(train_error: float, n: int, delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise UserError(f"delta {delta}: expected a probability in (0, 1)")
    if n < 1:
        raise UserError(f"n {n}: expected at least one training point")
    if not 0.0 <= train_error <= 1.0:
        raise UserError(f"training error {train_error}: expected a fraction in [0, 1]")


def kl_bernoulli(q: float, p: float) -> float:
    """kl(q || p) between Bernoulli(q) and Bernoulli(p), in nats (0 ln 0 = 0)."""
    p = min(max(p, 1e-300), 1 - 1e-16)
    out = 0.0
    if q > 0:
        out += q * math.log(q / p)
    if q < 1:
        out += (1 - q) * math.log((1 - q) / (1 - p))
    return out


def kl_inverse(q: float, budget: float) -> float:
    """The largest p >= q with kl(q || p) <= budget (bisection to 1e-12), 1 where no p < 1 is excluded."""
    if budget <= 0:
        return q
    lo, hi = q, 1.0
    if kl_bernoulli(q, 1 - 1e-16) <= budget:
        return 1.0
    while hi - lo > 1e-12:
        mid = (lo + hi) / 2
        if kl_bernoulli(q, mid) > budget:
            hi = mid
        else:
            lo = mid
    return hi


def occam(train_error: float, bits: float, n: int, delta: float) -> float:
    check(train_error, n, delta)
    return kl_inverse(train_error, (bits * LN2 + math.log(1 / delta)) / n)


def mcallester(train_error: float, kl_nats: float, n: int, delta: float) -> float:
    check(train_error, n, delta)
    return min(1.0, train_error + math.sqrt((kl_nats + math.log(2 * math.sqrt(n) / delta)) / (2 * n)))


def catoni(train_error: float, kl_nats: float, n: int, delta: float,
           grid: tuple[float, ...] = CATONI_GRID) -> tuple[float, float]:
    """The best bound over the grid and the C that gave it (the grid's cost already paid)."""
    check(train_error, n, delta)
    budget = (kl_nats + math.log(len(grid) / delta)) / n
    best = min(((1 - math.exp(-c * train_error - budget)) / (1 - math.exp(-c)), c) for c in grid)
    return min(1.0, best[0]), best[1]


@dataclass(frozen=True)
class Certificate:
    bound_error: float  # the smallest of the three, valid at delta
    bound: str  # which one it was
    occam: float
    mcallester: float
    catoni: float
    catoni_c: float
    train_error: float
    bits: float
    n_train: int
    delta: float


def certify(train_error: float, bits: float, n: int, delta: float = 0.05) -> Certificate:
    """All three bounds for a hypothesis described in `bits` bits, each at delta / 3."""
    check(train_error, n, delta)
    if bits < 0:
        raise UserError(f"description length {bits} bits: expected a non-negative length")
    each = delta / 3
    kl = bits * LN2
    values = {"occam": occam(train_error, bits, n, each), "mcallester": mcallester(train_error, kl, n, each)}
    values["catoni"], c = catoni(train_error, kl, n, each)
    name = min(values, key=values.get)
    return Certificate(values[name], name, values["occam"], values["mcallester"], values["catoni"], c,
                       train_error, bits, n, delta)
