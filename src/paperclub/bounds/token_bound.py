"""Token-level generalization bounds for a language model that a prefix-free message of `bits` bits describes.

The training set is one sequence of m tokens x_1..x_m. The hypothesis h predicts each token from the tokens
before it in its context window; its per-token loss is the log-loss of the *smoothed* prediction

    p_alpha(x | context) = (1 - alpha) p_h(x | context) + alpha / V,

which lies in [log2 1/(1 - alpha + alpha/V), log2 V/alpha], an interval of width

    Delta(alpha) = log2(1 + (1 - alpha) V / alpha)   bits.

The quantity bounded is the model's expected next-token loss given the contexts the data presents, averaged over
the m positions, R(h) = (1/m) sum_i E[loss(h, X_i | x_<i) | x_<i] (Lotfi et al., "Unlocking Tokens as Data
Points", 2024). Its differences from the empirical losses form a martingale, so Azuma's inequality with the prior
P(h) = 2^-bits (valid by Kraft) gives, with probability at least 1 - delta, for every h at once,

    R(h) <= R_hat(h) + Delta sqrt((bits ln 2 + ln 1/delta) / (2 m)).

- **alpha is chosen after the fact** from a grid of G values: each one gets delta / G (a union bound).
- **Subsampling**: R_hat over all m tokens may be too costly to evaluate. Estimated instead on s positions drawn
  uniformly with replacement (after h is fixed), it deviates by at most Delta sqrt(ln(1/delta') / (2 s)) with
  probability 1 - delta' (Hoeffding). delta is then split evenly between the two statements.
- **Top-1 error**: the same bound with the 0-1 loss (Delta = 1, no smoothing) bounds how often the most likely
  next token is wrong.

Each bound reported holds at `delta` on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from paperclub.bounds.bounds import LN2
from paperclub.errors import UserError

ALPHAS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)  # the smoothing grid, paid for by a union bound


def loss_range(alpha: float, vocab_size: int) -> float:
    """Delta(alpha): the width of the smoothed log-loss's range in bits."""
    if not 0.0 < alpha < 1.0:
        raise UserError(f"smoothing alpha {alpha}: expected a value in (0, 1)")
    return math.log2(1.0 + (1.0 - alpha) * vocab_size / alpha)


def check(n_train: int, n_sample: int, delta: float, bits: float) -> None:
    if not 0.0 < delta < 1.0:
        raise UserError(f"delta {delta}: expected a probability in (0, 1)")
    if n_train < 1 or not 1 <= n_sample <= n_train:
        raise UserError(f"{n_sample} evaluated tokens of {n_train}: expected 1 <= evaluated <= training tokens")
    if bits < 0:
        raise UserError(f"description length {bits} bits: expected a non-negative length")


def deviation(width: float, bits: float, n_train: int, n_sample: int, delta: float) -> float:
    """How far the true risk may lie above the (possibly subsampled) empirical one, for a loss of range `width`."""
    if n_sample == n_train:  # every token evaluated: no sampling error, all of delta to the martingale
        return width * math.sqrt((bits * LN2 + math.log(1 / delta)) / (2 * n_train))
    half = delta / 2
    return width * (math.sqrt((bits * LN2 + math.log(1 / half)) / (2 * n_train))
                    + math.sqrt(math.log(1 / half) / (2 * n_sample)))


@dataclass(frozen=True)
class TokenCertificate:
    bound_bits_per_token: float  # the best over the alpha grid, valid at delta
    alpha: float  # the smoothing that gave it
    train_bits_per_token: float  # smoothed empirical loss at that alpha
    bound_top1_error: float
    train_top1_error: float
    bits: float
    n_train: int
    n_sample: int
    delta: float
    per_alpha: dict[float, float]  # alpha -> its bound (each already paying for the grid)


def certify_tokens(smoothed_bits: dict[float, float], top1_error: float, bits: float, vocab_size: int,
                   n_train: int, n_sample: int, delta: float = 0.05) -> TokenCertificate:
    """Both bounds from the empirical losses on `n_sample` of the `n_train` training tokens.

    smoothed_bits: alpha -> mean smoothed log-loss in bits over the evaluated tokens, for every alpha of the grid
    the caller searched over (the grid's size is paid here, so pass all of them, not only the best)."""
    check(n_train, n_sample, delta, bits)
    if not smoothed_bits:
        raise UserError("no smoothing values: expected at least one alpha")
    if not 0.0 <= top1_error <= 1.0:
        raise UserError(f"top-1 error {top1_error}: expected a fraction in [0, 1]")
    each = delta / len(smoothed_bits)
    per_alpha = {a: v + deviation(loss_range(a, vocab_size), bits, n_train, n_sample, each)
                 for a, v in smoothed_bits.items()}
    alpha = min(per_alpha, key=per_alpha.get)
    top1 = min(1.0, top1_error + deviation(1.0, bits, n_train, n_sample, delta))
    return TokenCertificate(per_alpha[alpha], alpha, smoothed_bits[alpha], top1, top1_error, bits, n_train,
                            n_sample, delta, per_alpha)
