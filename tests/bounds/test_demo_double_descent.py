"""The double-descent demo: the peak at p = n, the effective dimension that follows it, the linear algebra by hand."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from paperclub.bounds.demos import double_descent as demo
from paperclub.bounds.demos.double_descent import DoubleDescentConfig, run
from paperclub.errors import UserError

SMALL = DoubleDescentConfig(n_train=20, input_dim=5, p_min=4, p_max=200, n_widths=8, n_trials=2, n_test=200)


@pytest.fixture(scope="module")
def default_result() -> dict:
    return run(DoubleDescentConfig())  # ~1.5 s on one core


def test_test_error_peaks_at_the_interpolation_threshold_and_descends_again(default_result):
    p = np.array(default_result["p"])
    test = np.array(default_result["test_mse"])
    n = default_result["n_train"]
    assert n in default_result["p"]
    peak = p[np.argmax(test)]
    assert n / 1.5 <= peak <= 1.5 * n  # seed 0 (and seeds 0-9): exactly at p = n
    # for p >> n the error falls far below its peak: >= 10x (seed 0: ~880x; seeds 0-9: >= 270x)
    assert test.max() >= 10 * test[-1]
    # and below the best under-parameterized model too: the widest network generalizes best
    assert test[-1] < test[p < n].min()
    assert np.all(np.array(default_result["test_mse_se"]) > 0)


def test_effective_dimension_tracks_test_error_while_parameter_count_grows(default_result):
    p = np.array(default_result["p"])
    n_eff = np.array(default_result["effective_dimension"])
    n = default_result["n_train"]
    peak = int(np.argmax(n_eff))
    assert n / 1.5 <= p[peak] <= 1.5 * n  # seed 0: at p = n, N_eff ~ 99 of at most n = 100
    assert n_eff[peak] <= n + 1e-9  # the Gauss-Newton Hessian has rank <= n
    assert np.all(np.diff(n_eff[peak:]) < 0)  # falls at every wider width
    assert n_eff[-1] <= 0.5 * n_eff[peak]  # seed 0: 20.5 vs 99 (seeds 0-9: >= 4.6x lower)
    assert n_eff[0] <= 0.5 * n_eff[peak]  # and it rose to get there (seed 0: 32.6)
    assert default_result["peak_effective_dimension_p"] == p[peak]
    counts = np.array(default_result["parameter_count"])
    assert np.all(np.diff(counts) > 0) and counts[-1] == 2000 * 21
    # the readout-only Hessian Phi^T Phi / n does not see the peak: its N_eff keeps growing
    readout = np.array(default_result["effective_dimension_readout"])
    at_n = default_result["p"].index(n)
    assert readout[0] < readout[at_n] < readout[-1]


def test_train_error_vanishes_exactly_from_the_threshold_on(default_result):
    p = np.array(default_result["p"])
    train = np.array(default_result["train_mse"])
    assert np.all(train[p >= default_result["n_train"]] < 1e-12)
    assert np.all(train[p < default_result["n_train"]] > 1e-3)


def test_effective_dimension_of_a_known_spectrum():
    # 3/(3+1) + 1/(1+1) + 0 + 0 (a round-off negative counts as zero)
    assert demo.effective_dimension(np.array([3.0, 1.0, 0.0, -1e-17]), alpha=1.0) == pytest.approx(1.25)
    assert demo.effective_dimension(np.full(10, 1e6), alpha=1e-2) == pytest.approx(10, rel=1e-7)


def _network_output(x: np.ndarray, w: np.ndarray, a: np.ndarray) -> np.ndarray:
    return np.maximum(x @ w.T / math.sqrt(x.shape[1]), 0) / math.sqrt(w.shape[0]) @ a


def test_gauss_newton_gram_matches_a_finite_difference_jacobian():
    rng = np.random.default_rng(3)
    n, d, p = 7, 3, 5
    x, w, a = rng.standard_normal((n, d)), rng.standard_normal((p, d)), rng.standard_normal(p)
    theta = np.concatenate([w.ravel(), a])
    h = 1e-6
    jac = np.empty((n, theta.size))
    for k in range(theta.size):
        up, down = theta.copy(), theta.copy()
        up[k] += h
        down[k] -= h
        f_up = _network_output(x, up[: p * d].reshape(p, d), up[p * d :])
        f_down = _network_output(x, down[: p * d].reshape(p, d), down[p * d :])
        jac[:, k] = (f_up - f_down) / (2 * h)
    gram = demo.gauss_newton_gram(x, x @ w.T / math.sqrt(d), a)
    np.testing.assert_allclose(gram, jac @ jac.T / n, rtol=1e-6, atol=1e-8)
    # the n x n matrix carries the nonzero spectrum of the p(d+1)-square Hessian J^T J / n
    full = np.linalg.eigvalsh(jac.T @ jac / n)
    assert demo.effective_dimension(np.linalg.eigvalsh(gram), 0.1) == pytest.approx(
        demo.effective_dimension(full, 0.1), rel=1e-6)


@pytest.mark.parametrize("p", [30, 50, 80])
def test_min_norm_readout_is_the_pseudo_inverse_solution(p):
    rng = np.random.default_rng(p)
    phi, y = rng.standard_normal((50, p)), rng.standard_normal(50)
    a, eigenvalues = demo.min_norm_readout(phi, y)
    np.testing.assert_allclose(a, np.linalg.pinv(phi) @ y, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.sort(eigenvalues)[-min(p, 50):], np.linalg.svd(phi, compute_uv=False)[::-1] ** 2,
                               rtol=1e-8)


def test_small_config_plot_is_a_png_and_result_is_json(tmp_path):
    out = tmp_path / "dd.png"
    result = run(SMALL, plot=out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [f.name for f in tmp_path.iterdir()] == ["dd.png"]  # no temporary left behind
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert result["p"][0] == 4 and result["p"][-1] == 200 and 20 in result["p"]
    lengths = {len(result[k]) for k in ("p", "test_mse", "test_mse_se", "train_mse", "effective_dimension")}
    assert lengths == {len(result["p"])}
    assert result["alpha"] == 0.01 and result["n_train"] == 20 and result["config"]["n_trials"] == 2


def test_one_trial_reports_zero_standard_error():
    result = run(dataclasses.replace(SMALL, n_trials=1))
    assert result["test_mse_se"] == [0.0] * len(result["p"])


@pytest.mark.parametrize(("field", "value"), [
    ("n_train", 1), ("input_dim", 0), ("noise", -1.0), ("p_min", 0), ("p_max", 3), ("n_widths", 1),
    ("n_trials", 0), ("n_test", 0), ("alpha", 0.0), ("alpha", math.inf), ("seed", -1), ("n_train", 10.0),
])
def test_bad_config_names_the_field(field, value):
    config = dataclasses.replace(SMALL, **{field: value})
    with pytest.raises(UserError, match=rf"DoubleDescentConfig\.{field} "):
        run(config)
