"""Soft inductive bias: one order-150 polynomial that fits a simple and a complex target from 30 noisy points.

The classical recipe restricts the hypothesis space (fit a cubic) and fails when the truth is complex; an unrestricted
order-150 fit interpolates the noise. Wilson's alternative keeps the large space but ranks its members: high orders
are allowed, merely made expensive. With orthonormal Legendre polynomials phi_k = sqrt((2k+1)/2) P_k on [-1, 1] and
f(x) = sum_{k=0..K} c_k phi_k(x), the soft fit minimizes

    sum_i (y_i - f(x_i))^2 + lam * sum_k k^p c_k^2        (constant term free; p = 4 by default),

a ridge penalty that grows with the order (p = 4 is close to penalizing curvature, since ((1-x^2) f')' multiplies
P_k by -k(k+1)). lam is picked without looking at the test grid, by the closed-form leave-one-out error
mean_i (r_i / (1 - H_ii))^2 of this linear smoother (H the hat matrix). The fit is computed in data space:
with K = Phi_r W^-1 Phi_r^T (the penalized columns) and Q an orthonormal basis of the vectors orthogonal to the
constant, H = 11^T/n + Q (Q^T K Q) (Q^T K Q + lam I)^-1 Q^T, one n x n eigendecomposition for every lam.

Baselines: a low-order (default cubic) least-squares fit, and the order-K minimum-norm least-squares interpolant.
In an orthonormal basis the latter is the interpolant of smallest L2 norm, which hugs zero between the samples.
Reported: train MSE (noisy labels) and test MSE (noise-free target on a dense grid) for every target x model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.polynomial import legendre

from paperclub.bounds.demos.validate import require_float, require_int

log = logging.getLogger(__name__)

# log-spaced candidates for lam when the config leaves it to leave-one-out
LAMBDA_GRID = np.logspace(-12, 2, 57)

TARGETS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "simple": ("sin(pi x)", lambda x: np.sin(np.pi * x)),
    "complex": ("sin(2 pi x) + 0.5 sin(5 pi x)", lambda x: np.sin(2 * np.pi * x) + 0.5 * np.sin(5 * np.pi * x)),
}
MODELS = ("low_order", "high_order_plain", "high_order_soft")


@dataclass(frozen=True)
class PolynomialConfig:
    order: int = 150  # order K of the flexible model (K + 1 coefficients)
    n_train: int = 30  # training points, one uniformly placed in each of n equal cells of [-1, 1]
    noise: float = 0.1  # standard deviation of the Gaussian label noise
    low_order: int = 3  # order of the restricted baseline
    penalty_power: float = 4.0  # p in lam * k^p
    lam: float | None = None  # None: choose by leave-one-out over LAMBDA_GRID; 0: plain least squares
    n_test: int = 1000  # evenly spaced test points on [-1, 1]
    seed: int = 0


@dataclass(frozen=True)
class SoftFit:
    """One penalized fit: orthonormal-Legendre coefficients c_0..c_K, the hat matrix diagonal, its LOO error."""

    lam: float
    coef: np.ndarray
    hat_diag: np.ndarray
    loo_mse: float

    @property
    def effective_dof(self) -> float:
        """tr(H): how many parameters the data actually pin down."""
        return float(self.hat_diag.sum())


def legendre_design(x: np.ndarray, order: int) -> np.ndarray:
    """Columns phi_0..phi_order (orthonormal Legendre on [-1, 1]) evaluated at x."""
    scale = np.sqrt((2 * np.arange(order + 1) + 1) / 2)
    return legendre.legvander(np.asarray(x, dtype=float), order) * scale


def penalty_weights(order: int, power: float) -> np.ndarray:
    """k^power for k = 0..order; the constant (k = 0) is not penalized."""
    return np.arange(order + 1, dtype=float) ** power


def _loo_mse(residual: np.ndarray, hat_diag: np.ndarray) -> float:
    leave = 1.0 - hat_diag
    if np.any(leave <= 1e-10):  # an interpolating smoother has no leave-one-out prediction worth the name
        return math.inf
    return float(np.mean((residual / leave) ** 2))


def soft_path(x: np.ndarray, y: np.ndarray, order: int, power: float, lams: Sequence[float]) -> list[SoftFit]:
    """Penalized fits for every lam > 0 in `lams`, sharing one n x n eigendecomposition (see the module docstring)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = len(y)
    phi = legendre_design(x, order)
    phi_r = phi[:, 1:]
    w_r = penalty_weights(order, power)[1:]
    kernel = (phi_r / w_r) @ phi_r.T
    basis, _ = np.linalg.qr(np.column_stack([np.ones(n), np.eye(n)[:, : n - 1]]))
    q = basis[:, 1:]  # orthonormal, orthogonal to the constant vector
    mu, u = np.linalg.eigh(q.T @ kernel @ q)
    mu = np.clip(mu, 0.0, None)
    qu = q @ u
    z = qu.T @ y
    fits = []
    for lam in lams:
        if not lam > 0:
            raise ValueError(f"soft_path needs lam > 0, got {lam}")
        shrink = mu / (mu + lam)
        fitted = y.mean() + qu @ (shrink * z)
        hat_diag = 1.0 / n + (qu**2) @ shrink
        dual = qu @ (z / (mu + lam))
        c_r = (phi_r.T @ dual) / w_r
        c_0 = np.mean(y - phi_r @ c_r) / phi[0, 0]
        fits.append(SoftFit(float(lam), np.concatenate([[c_0], c_r]), hat_diag, _loo_mse(y - fitted, hat_diag)))
    return fits


def least_squares_fit(x: np.ndarray, y: np.ndarray, order: int) -> SoftFit:
    """Unpenalized least squares in the orthonormal basis; the minimum-norm solution when order + 1 > n."""
    phi = legendre_design(x, order)
    coef, *_ = np.linalg.lstsq(phi, y, rcond=None)
    hat_diag = np.einsum("ij,ji->i", phi, np.linalg.pinv(phi))
    return SoftFit(0.0, coef, hat_diag, _loo_mse(y - phi @ coef, hat_diag))


def soft_fit(x: np.ndarray, y: np.ndarray, order: int, power: float, lam: float) -> SoftFit:
    """The penalized fit at one lam (lam = 0 is plain least squares)."""
    if lam == 0:
        return least_squares_fit(x, y, order)
    return soft_path(x, y, order, power, [lam])[0]


def choose_lambda(x: np.ndarray, y: np.ndarray, order: int, power: float, lams: Sequence[float]) -> SoftFit:
    """The fit with the smallest leave-one-out error over `lams` (ties: the larger lam, the simpler fit)."""
    fits = soft_path(x, y, order, power, lams)
    best = min(fits, key=lambda f: (f.loo_mse, -f.lam))
    if best.lam in (min(lams), max(lams)):
        log.warning("leave-one-out picked lam=%.3g at the edge of the grid [%.3g, %.3g]", best.lam, min(lams),
                    max(lams))
    return best


def validate(config: PolynomialConfig) -> None:
    """Raise UserError naming the first bad field."""
    require_int("PolynomialConfig", "order", config.order, 1, 1000)
    require_int("PolynomialConfig", "n_train", config.n_train, 2, 2000)
    require_int("PolynomialConfig", "low_order", config.low_order, 1, config.order)
    require_int("PolynomialConfig", "n_test", config.n_test, 2, 100_000)
    require_int("PolynomialConfig", "seed", config.seed, 0, 2**63 - 1)
    require_float("PolynomialConfig", "noise", config.noise, 0.0, 1e6)
    require_float("PolynomialConfig", "penalty_power", config.penalty_power, 0.0, 16.0, lo_open=True)
    if config.lam is not None:
        require_float("PolynomialConfig", "lam", config.lam, 0.0, 1e12)


def training_inputs(rng: np.random.Generator, n: int) -> np.ndarray:
    """One uniform point in each of n equal cells of [-1, 1] (a jittered grid: random, but without wide gaps)."""
    return -1.0 + (np.arange(n) + rng.uniform(size=n)) * (2.0 / n)


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a - b) ** 2))


def run(config: PolynomialConfig, plot: Path | None = None) -> dict:
    """Fit the three models to both targets; return train/test MSEs (and write the two-panel figure to `plot`)."""
    validate(config)
    if plot is not None:
        from paperclub.atomic import check_writable

        check_writable(plot, "plot")
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    x = training_inputs(rng, config.n_train)
    x_test = np.linspace(-1.0, 1.0, config.n_test)
    design_test = legendre_design(x_test, config.order)
    targets: dict[str, dict] = {}
    curves: dict[str, dict] = {}
    for name, (formula, f) in TARGETS.items():
        y = f(x) + config.noise * rng.standard_normal(config.n_train)
        truth = f(x_test)
        low = least_squares_fit(x, y, config.low_order)
        plain = least_squares_fit(x, y, config.order)
        if config.lam is None:
            soft = choose_lambda(x, y, config.order, config.penalty_power, LAMBDA_GRID)
        else:
            soft = soft_fit(x, y, config.order, config.penalty_power, config.lam)
        predictions = {
            "low_order": (legendre_design(x_test, config.low_order) @ low.coef,
                          legendre_design(x, config.low_order) @ low.coef),
            "high_order_plain": (design_test @ plain.coef, legendre_design(x, config.order) @ plain.coef),
            "high_order_soft": (design_test @ soft.coef, legendre_design(x, config.order) @ soft.coef),
        }
        result: dict = {"formula": formula}
        for model, (pred_test, pred_train) in predictions.items():
            result[model] = {"train_mse": _mse(pred_train, y), "test_mse": _mse(pred_test, truth)}
        result["low_order"]["order"] = config.low_order
        result["high_order_plain"]["order"] = config.order
        result["high_order_soft"].update(
            order=config.order, penalty_power=float(config.penalty_power), **{"lambda": soft.lam},
            lambda_selection="leave-one-out" if config.lam is None else "fixed",
            loo_mse=soft.loo_mse if math.isfinite(soft.loo_mse) else None,
            effective_dof=soft.effective_dof)
        result["best_model"] = min(MODELS, key=lambda m: result[m]["test_mse"])
        targets[name] = result
        curves[name] = {"x": x, "y": y, "truth": truth, **{m: p[0] for m, p in predictions.items()}}
        log.info("%s target: test MSE low %.3g, plain %.3g, soft %.3g (lam %.3g, dof %.1f)", name,
                 result["low_order"]["test_mse"], result["high_order_plain"]["test_mse"],
                 result["high_order_soft"]["test_mse"], soft.lam, soft.effective_dof)
    out = {"targets": targets, "n_parameters": config.order + 1, "config": asdict(config),
           "runtime_s": time.perf_counter() - start}
    if plot is not None:
        _plot(Path(plot), x_test, curves, targets, config)
    return out


def _plot(path: Path, x_test: np.ndarray, curves: dict, targets: dict, config: PolynomialConfig) -> None:
    from matplotlib.figure import Figure

    from paperclub.atomic import atomic_path

    fig = Figure(figsize=(12, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    k, p = config.order, config.penalty_power
    styles = {
        "low_order": dict(color="tab:orange", ls="--", lw=1.6, label=f"order {config.low_order}"),
        "high_order_plain": dict(color="0.55", lw=0.8, label=f"order {k}, min-norm"),
        "high_order_soft": dict(color="tab:blue", lw=2.0, label=f"order {k}, lam k^{p:g}"),
    }
    for ax, (name, c) in zip(axes, curves.items(), strict=True):
        ax.plot(x_test, c["truth"], color="black", lw=1.2, label="truth")
        for model, style in styles.items():
            label = f"{style['label']} (test MSE {targets[name][model]['test_mse']:.2g})"
            ax.plot(x_test, c[model], **{**style, "label": label})
        ax.scatter(c["x"], c["y"], s=18, color="crimson", zorder=5, label=f"{config.n_train} samples")
        low, high = float(c["truth"].min()), float(c["truth"].max())
        span = high - low
        ax.set_ylim(low - 0.15 * span - 0.3, high + 0.65 * span + 0.3)  # room for the legend above the data
        ax.set_xlim(-1, 1)
        ax.set_title(f"{name} target: {targets[name]['formula']}")
        ax.set_xlabel("x")
        ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.suptitle("One flexible model with a soft preference for low orders fits both (Wilson, ICML 2025)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
