"""Power laws L(x) = A / x^B + C, their asymptotes C with bootstrap confidence intervals, and data efficiency.

Two estimators of (A, B, C), both with B > 0 and C >= 0:
- least squares on the losses themselves (`scipy.optimize.least_squares`, several starting points);
- the Huber loss (delta = 1e-3) on log-residuals, log(A x^-B + C) - log L, over a grid of starting points: the
  estimator of the Epoch AI refit of Chinchilla (Besiroglu et al., 2024; they minimise it with L-BFGS, we with
  scipy's trust-region least squares and its Huber loss), which a single outlying run moves less.
x is divided by its smallest value before fitting (conditioning); A is reported in the original units.

Uncertainty: every run's validation loss is a mean over validation chunks, and chunks belong to documents. A
bootstrap replicate draws the validation *documents* with replacement, recomputes every run's (and every
ensemble's) loss on that draw, redoes every selection (the best run of each search) and every fit, and so carries
the evaluation noise into each asymptote and multiplier. It does not carry seed-to-seed training noise: only
repeated runs can, and the study runs each configuration once (ensemble members excepted).

Data efficiency (the paper's definition): fit the standard recipe's best loss against the token budget,
L_std(D) = A / D^B + C, and for a recipe that reaches loss L at budget D0 report D_eff / D0 with
D_eff = (A / (L - C))^(1/B), the budget the standard recipe would need to match it; infinite when L <= C.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import least_squares

HUBER_DELTA = 1e-3
METHODS = ("huber", "least_squares")


@dataclass(frozen=True)
class PowerLaw:
    A: float
    B: float
    C: float
    method: str
    rmse: float  # of the fitted losses, in nats

    def __call__(self, x) -> np.ndarray:
        return self.A * np.asarray(x, dtype=np.float64) ** (-self.B) + self.C

    def inverse(self, loss: float) -> float:
        """The x at which the law reaches `loss` (infinite at or below the asymptote)."""
        if loss <= self.C:
            return math.inf
        return (self.A / (loss - self.C)) ** (1.0 / self.B)


def _unpack(theta: np.ndarray, x0: float) -> tuple[float, float, float]:
    log_a, b, log_c = theta
    return math.exp(log_a) * x0**b, b, math.exp(log_c)


def _starts(y: np.ndarray) -> list[np.ndarray]:
    lo = max(float(y.min()), 1e-6)
    out = []
    for c_frac in (0.0, 0.5, 0.9, 0.99):
        c = max(lo * c_frac, 1e-6)
        for b in (0.1, 0.5, 1.0, 2.0):
            a = max(float(y.max()) - c, 1e-6)
            out.append(np.array([math.log(a), b, math.log(c)]))
    return out


def fit_power_law(x, y, method: str = "huber", start: np.ndarray | None = None) -> PowerLaw:
    """Fit L = A x^-B + C to at least three points. `start` (in the internal parametrisation) skips the grid of
    starting points: the bootstrap starts each replicate from the point estimate."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or len(set(x.tolist())) < 3:
        raise ValueError(f"a power law with an asymptote needs at least 3 distinct x, got {sorted(set(x.tolist()))}")
    if method not in METHODS:
        raise ValueError(f"unknown fit method {method!r}: {METHODS}")
    x0 = float(x.min())
    log_u, log_y = np.log(x / x0), np.log(y)

    def predict(theta):
        log_a, b, log_c = theta
        return np.logaddexp(log_a - b * log_u, log_c)  # log(A u^-B + C)

    def d_predict(theta):  # (points, 3): derivatives of log(A u^-B + C) in (log A, B, log C)
        share = np.exp(theta[0] - theta[1] * log_u - predict(theta))  # the power term's share of the sum
        return np.stack([share, -log_u * share, 1 - share], axis=1)

    best = None
    bounds = ([-30, 1e-4, -30], [30, 10, 30])
    for theta0 in [start] if start is not None else _starts(y):
        if method == "least_squares":
            r = least_squares(lambda t: np.exp(predict(t)) - y, theta0, bounds=bounds,
                              jac=lambda t: np.exp(predict(t))[:, None] * d_predict(t))
        else:  # scipy's "huber" on residual/f_scale is the Huber loss with delta = f_scale (up to a constant factor)
            r = least_squares(lambda t: predict(t) - log_y, theta0, bounds=bounds, jac=d_predict, loss="huber",
                              f_scale=HUBER_DELTA)
        value, theta = float(r.cost), r.x
        if best is None or value < best[0]:
            best = (value, theta)
    theta = best[1]
    A, B, C = _unpack(theta, x0)
    law = PowerLaw(A, B, C, method, 0.0)
    rmse = float(np.sqrt(np.mean((law(x) - y) ** 2)))
    law = PowerLaw(A, B, C, method, rmse)
    object.__setattr__(law, "_theta", theta)
    return law


def refit(law: PowerLaw, x, y) -> PowerLaw:
    """Fit again (a bootstrap replicate), starting from `law`."""
    return fit_power_law(x, y, law.method, start=getattr(law, "_theta", None))


def document_weights(groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, chunks) weights: each replicate draws the documents with replacement; a chunk's weight is how
    often its document was drawn."""
    docs, inverse = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, len(docs), len(docs)), minlength=len(docs))
                       for _ in range(n_boot)])
    return counts[:, inverse].astype(np.float64)


def percentile_ci(samples: list[float], level: float = 0.95) -> list[float]:
    finite = np.asarray([s for s in samples if np.isfinite(s)])
    if len(finite) < max(10, 0.5 * len(samples)):
        return [math.nan, math.nan]
    lo, hi = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def law_dict(law: PowerLaw) -> dict:
    return {k: v for k, v in asdict(law).items()}
