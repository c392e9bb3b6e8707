"""Double descent in random-features regression, and an effective dimension that follows the test error.

Model: a two-layer ReLU network f(x) = sum_{j=1..p} a_j relu(w_j . x / sqrt(d)) / sqrt(p) on x ~ N(0, I_d), whose
first layer W stays at its random Gaussian initialization and whose readout a is the minimum-norm least-squares
solution on n noisy training points. The width p is swept across the interpolation threshold p = n. Test error
rises towards p = n, where the n x p feature matrix becomes square and its smallest singular values approach zero
(the readout norm explodes to fit the noise), and falls again for p >> n, where the minimum-norm choice among the
many interpolants is a smooth one. The raw parameter count p (d + 1) grows monotonically throughout.

Effective dimension (MacKay; Maddox, Benton & Wilson 2020): N_eff = sum_i l_i / (l_i + alpha), alpha > 0 fixed,
over the eigenvalues l_i of the loss Hessian at the trained network: how many parameter directions the data pin
down. The matrix used here is the Gauss-Newton Hessian J^T J / n of the loss (1/2n) sum_i r_i^2 with respect to
all p (d + 1) parameters (W and a), evaluated at (W_init, a_min-norm). It equals the true Hessian wherever the
training loss is zero (p >= n), and its nonzero eigenvalues are those of the n x n matrix J J^T / n, with
J J^T = Phi Phi^T + (M diag(a^2) M^T / p) * (X X^T / d)  (* elementwise, M_ij = 1[w_j . x_i > 0]).
The second term is the first-layer curvature; it scales with a^2 and so swells with the readout norm at p = n.
For comparison, `effective_dimension_readout` uses only the readout block Phi^T Phi / n (the Hessian of the linear
least-squares problem in a): its spectrum does not depend on the solution, and it rises monotonically with p.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from paperclub.bounds.demos.validate import require_float, require_int

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DoubleDescentConfig:
    n_train: int = 100  # training points n
    input_dim: int = 20  # d
    noise: float = 0.3  # standard deviation of the Gaussian label noise
    p_min: int = 10  # narrowest network
    p_max: int = 2000  # widest network (20 n)
    n_widths: int = 30  # log-spaced widths between p_min and p_max; p = n is always added when in range
    n_trials: int = 5  # independent draws of teacher, data and first layer; results are their mean
    n_test: int = 2000
    alpha: float = 0.01  # the fixed alpha in N_eff
    seed: int = 0


def effective_dimension(eigenvalues: np.ndarray, alpha: float) -> float:
    """N_eff = sum_i l_i / (l_i + alpha); negative round-off eigenvalues count as zero."""
    lam = np.clip(np.asarray(eigenvalues, dtype=float), 0.0, None)
    return float(np.sum(lam / (lam + alpha)))


def relu_features(pre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Phi, M) from the preactivations x W^T / sqrt(d) (one column per unit): Phi = relu(pre) / sqrt(p) and the
    active-unit mask M = 1[pre > 0]."""
    return np.maximum(pre, 0.0) / math.sqrt(pre.shape[1]), (pre > 0).astype(float)


def min_norm_readout(phi: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The minimum-norm least-squares solution of phi a = y, and the eigenvalues of the smaller Gram matrix
    (phi^T phi if p < n, else phi phi^T), whose nonzero part is shared by both. One symmetric eigendecomposition of
    a min(n, p)-square matrix: cheaper than an SVD, and it does not stall when BLAS threads compete for the CPUs."""
    n, p = phi.shape
    gram = phi.T @ phi if p < n else phi @ phi.T
    lam, vec = np.linalg.eigh(gram)
    keep = lam > max(lam[-1], 0.0) * max(n, p) * np.finfo(float).eps  # the pseudo-inverse cut-off
    inv = np.where(keep, 1.0 / np.where(keep, lam, 1.0), 0.0)
    if p < n:
        a = vec @ (inv * (vec.T @ (phi.T @ y)))
    else:
        a = phi.T @ (vec @ (inv * (vec.T @ y)))
    return a, lam


def gauss_newton_gram(x: np.ndarray, pre: np.ndarray, a: np.ndarray) -> np.ndarray:
    """J J^T / n for the Jacobian J (n x p(d+1)) of the network outputs with respect to (W, a), without forming J;
    `pre` holds the preactivations x W^T / sqrt(d)."""
    n, d = x.shape
    p = pre.shape[1]
    phi, mask = relu_features(pre)
    first_layer = ((mask * a**2) @ mask.T / p) * (x @ x.T / d)
    return (phi @ phi.T + first_layer) / n


def width_grid(config: DoubleDescentConfig) -> list[int]:
    grid = np.round(np.geomspace(config.p_min, config.p_max, config.n_widths)).astype(int).tolist()
    if config.p_min <= config.n_train <= config.p_max:
        grid.append(config.n_train)
    return sorted(set(grid))


def validate(config: DoubleDescentConfig) -> None:
    """Raise UserError naming the first bad field."""
    require_int("DoubleDescentConfig", "n_train", config.n_train, 2, 5000)
    require_int("DoubleDescentConfig", "input_dim", config.input_dim, 1, 10_000)
    require_int("DoubleDescentConfig", "p_min", config.p_min, 1, 10_000)
    require_int("DoubleDescentConfig", "p_max", config.p_max, config.p_min, 10_000)
    require_int("DoubleDescentConfig", "n_widths", config.n_widths, 2, 500)
    require_int("DoubleDescentConfig", "n_trials", config.n_trials, 1, 1000)
    require_int("DoubleDescentConfig", "n_test", config.n_test, 1, 100_000)
    require_int("DoubleDescentConfig", "seed", config.seed, 0, 2**63 - 1)
    require_float("DoubleDescentConfig", "noise", config.noise, 0.0, 1e6)
    require_float("DoubleDescentConfig", "alpha", config.alpha, 0.0, 1e12, lo_open=True)


def _trial(rng: np.random.Generator, config: DoubleDescentConfig, widths: list[int]) -> np.ndarray:
    """One draw of teacher, data and first layer; rows (test, train, N_eff, N_eff readout) over `widths`."""
    d = config.input_dim
    beta = rng.standard_normal(d) / math.sqrt(d)

    def teacher(x: np.ndarray) -> np.ndarray:  # a linear signal plus a saturating bend along the first axis
        return x @ beta + 0.5 * np.tanh(2.0 * x[:, 0])

    x = rng.standard_normal((config.n_train, d))
    x_test = rng.standard_normal((config.n_test, d))
    y = teacher(x) + config.noise * rng.standard_normal(config.n_train)
    y_test = teacher(x_test)
    w_all = rng.standard_normal((max(widths), d))  # nested networks: width p uses the first p units
    pre_all = x @ w_all.T / math.sqrt(d)
    pre_test_all = x_test @ w_all.T / math.sqrt(d)
    rows = np.empty((4, len(widths)))
    for i, p in enumerate(widths):
        pre = pre_all[:, :p]
        phi, _ = relu_features(pre)
        phi_test, _ = relu_features(pre_test_all[:, :p])
        a, gram_eigenvalues = min_norm_readout(phi, y)
        rows[0, i] = np.mean((phi_test @ a - y_test) ** 2)
        rows[1, i] = np.mean((phi @ a - y) ** 2)
        rows[2, i] = effective_dimension(np.linalg.eigvalsh(gauss_newton_gram(x, pre, a)), config.alpha)
        rows[3, i] = effective_dimension(gram_eigenvalues / config.n_train, config.alpha)
    return rows


def run(config: DoubleDescentConfig, plot: Path | None = None) -> dict:
    """Sweep the width; return per-width test/train MSE and effective dimensions (and write the figure to `plot`)."""
    validate(config)
    if plot is not None:
        from paperclub.atomic import check_writable

        check_writable(plot, "plot")
    start = time.perf_counter()
    widths = width_grid(config)
    seeds = np.random.SeedSequence(config.seed).spawn(config.n_trials)
    # one BLAS thread: the matrices are at most n x p = 100 x 2000, and on a busy 2-core machine OpenBLAS's
    # waiting threads made the sweep 10-15x slower
    with threadpool_limits(limits=1, user_api="blas"):
        trials = np.stack([_trial(np.random.default_rng(s), config, widths) for s in seeds])  # (trials, 4, widths)
    mean = trials.mean(axis=0)
    if config.n_trials > 1:
        se = trials.std(axis=0, ddof=1) / math.sqrt(config.n_trials)
    else:
        se = np.zeros_like(mean)  # one trial: no spread to report
    peak = int(np.argmax(mean[0]))
    peak_neff = int(np.argmax(mean[2]))
    out = {
        "p": widths,
        "parameter_count": [p * (config.input_dim + 1) for p in widths],
        "test_mse": mean[0].tolist(),
        "test_mse_se": se[0].tolist(),
        "train_mse": mean[1].tolist(),
        "effective_dimension": mean[2].tolist(),
        "effective_dimension_se": se[2].tolist(),
        "effective_dimension_readout": mean[3].tolist(),
        "hessian": "Gauss-Newton J^T J / n of (1/2n) sum r_i^2 w.r.t. all p(d+1) parameters at (W_init, a_min-norm)",
        "n_train": config.n_train,
        "alpha": float(config.alpha),
        "peak_test_mse_p": widths[peak],
        "peak_effective_dimension_p": widths[peak_neff],
        "config": asdict(config),
        "runtime_s": time.perf_counter() - start,
    }
    log.info("test MSE peaks at p=%d (%.3g), N_eff peaks at p=%d (%.1f); at p=%d: test MSE %.3g, N_eff %.1f",
             widths[peak], mean[0, peak], widths[peak_neff], mean[2, peak_neff], widths[-1], mean[0, -1],
             mean[2, -1])
    if plot is not None:
        _plot(Path(plot), out)
    return out


def _plot(path: Path, out: dict) -> None:
    from matplotlib.figure import Figure

    from paperclub.atomic import atomic_path

    p = np.array(out["p"])
    n = out["n_train"]
    fig = Figure(figsize=(7.5, 7), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.errorbar(p, out["test_mse"], yerr=out["test_mse_se"], color="tab:red", marker="o", ms=3, capsize=2,
                 label="test MSE")
    top.plot(p, np.maximum(out["train_mse"], 1e-12), color="tab:gray", ls="--", marker=".", label="train MSE")
    top.set_yscale("log")
    top.set_ylim(bottom=0.1 * min(out["test_mse"]))  # the train MSE of interpolating widths (~0) drops off
    top.set_ylabel("MSE (mean over trials)")
    top.legend(fontsize=8)
    top.set_title(f"Random ReLU features, n = {n}, min-norm least squares")
    bottom.plot(p, out["effective_dimension"], color="tab:blue", marker="o", ms=3,
                label=f"N_eff, full-network Hessian (alpha={out['alpha']:g})")
    bottom.plot(p, out["effective_dimension_readout"], color="tab:blue", ls=":",
                label="N_eff, readout block only")
    bottom.set_ylabel("effective dimension")
    bottom.set_xlabel("width p (parameters grow as p (d+1))")
    bottom.set_xscale("log")
    bottom.legend(fontsize=8)
    for ax in (top, bottom):
        ax.axvline(n, color="black", lw=0.8, ls="--")
        ax.grid(alpha=0.3, which="both")
    top.annotate("p = n", (n, 1), xycoords=("data", "axes fraction"), xytext=(3, -12), textcoords="offset points",
                 fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
