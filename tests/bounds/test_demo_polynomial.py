"""The soft-inductive-bias polynomial demo: the phenomenon at the defaults, the linear algebra by hand, the outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from paperclub.bounds.demos import polynomial as demo
from paperclub.bounds.demos.polynomial import PolynomialConfig, run
from paperclub.errors import UserError


@pytest.fixture(scope="module")
def default_result() -> dict:
    return run(PolynomialConfig())  # ~0.1 s


def test_defaults_show_one_soft_model_fitting_both_targets(default_result):
    targets = default_result["targets"]
    for name in ("simple", "complex"):
        mse = {m: targets[name][m]["test_mse"] for m in demo.MODELS}
        # the soft order-150 fit is within 2x of the best of the three on both targets (seeds 0-29: always <= 1.1x)
        assert mse["high_order_soft"] <= 2.0 * min(mse.values()), (name, mse)
    simple = {m: targets["simple"][m]["test_mse"] for m in demo.MODELS}
    complex_ = {m: targets["complex"][m]["test_mse"] for m in demo.MODELS}
    # the cubic cannot follow the complex target: >= 10x worse than the soft fit (seed 0: ~49x; seeds 0-29: >= 26x)
    assert complex_["low_order"] >= 10 * complex_["high_order_soft"]
    # the cubic is fine on the simple one: within 3x of the soft fit (seed 0: 2.1x)
    assert simple["low_order"] <= 3 * simple["high_order_soft"]
    # the unpenalized order-150 fit interpolates and misses between the samples: >= 10x worse on the simple target
    # (seed 0: ~113x; seeds 0-29: >= 60x)
    assert simple["high_order_plain"] >= 10 * simple["high_order_soft"]
    assert targets["simple"]["high_order_plain"]["train_mse"] < 1e-20
    assert targets["simple"]["best_model"] == targets["complex"]["best_model"] == "high_order_soft"


def test_defaults_choose_lambda_inside_the_grid_by_leave_one_out(default_result):
    for name in ("simple", "complex"):
        soft = default_result["targets"][name]["high_order_soft"]
        assert soft["lambda_selection"] == "leave-one-out"
        assert demo.LAMBDA_GRID[0] < soft["lambda"] < demo.LAMBDA_GRID[-1]
        assert soft["train_mse"] > 0  # it does not interpolate the noise
        assert 2 < soft["effective_dof"] < default_result["config"]["n_train"]
    # the complex target needs more effective parameters, hence a smaller lambda
    simple, complex_ = (default_result["targets"][k]["high_order_soft"] for k in ("simple", "complex"))
    assert complex_["lambda"] < simple["lambda"] and complex_["effective_dof"] > simple["effective_dof"]


def _data(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(-1, 1, n))
    return x, np.cos(3 * x) + 0.1 * rng.standard_normal(n)


def test_zero_penalty_with_order_below_n_is_numpys_polynomial_fit():
    x, y = _data(30)
    grid = np.linspace(-1, 1, 50)
    fit = demo.soft_fit(x, y, order=5, power=4.0, lam=0.0)
    expected = np.polynomial.Legendre.fit(x, y, 5)(grid)
    np.testing.assert_allclose(demo.legendre_design(grid, 5) @ fit.coef, expected, atol=1e-10)
    assert fit.effective_dof == pytest.approx(6.0)  # six free coefficients
    # end to end: with lam = 0 and the same order the "soft" model is the low-order least-squares model
    result = run(PolynomialConfig(order=5, low_order=5, lam=0.0))
    for name in ("simple", "complex"):
        t = result["targets"][name]
        assert t["high_order_soft"]["test_mse"] == pytest.approx(t["low_order"]["test_mse"], rel=1e-9)
        assert t["high_order_soft"]["lambda_selection"] == "fixed"


def test_penalized_fit_solves_the_normal_equations():
    x, y = _data(30)
    order, power, lam = 40, 4.0, 1e-3
    phi = demo.legendre_design(x, order)
    normal = phi.T @ phi + lam * np.diag(np.arange(order + 1.0) ** power)
    fit = demo.soft_fit(x, y, order, power, lam)
    np.testing.assert_allclose(fit.coef, np.linalg.solve(normal, phi.T @ y), rtol=1e-7, atol=1e-9)
    hat = phi @ np.linalg.solve(normal, phi.T)
    np.testing.assert_allclose(fit.hat_diag, np.diag(hat), atol=1e-9)


def test_closed_form_leave_one_out_matches_refitting():
    x, y = _data(15, seed=2)
    order, power, lam = 30, 4.0, 1e-2
    errors = []
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        fit = demo.soft_fit(x[keep], y[keep], order, power, lam)
        errors.append((demo.legendre_design(x[i : i + 1], order) @ fit.coef)[0] - y[i])
    assert demo.soft_fit(x, y, order, power, lam).loo_mse == pytest.approx(np.mean(np.square(errors)), rel=1e-8)


def test_orthonormal_basis():
    grid, weights = np.polynomial.legendre.leggauss(80)
    phi = demo.legendre_design(grid, 20)
    np.testing.assert_allclose(phi.T @ (weights[:, None] * phi), np.eye(21), atol=1e-12)


def test_plot_is_written_atomically_as_png(tmp_path):
    out = tmp_path / "plots" / "poly.png"
    run(PolynomialConfig(n_test=200), plot=out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["poly.png"]  # no temporary left behind


def test_result_survives_json(default_result):
    text = json.dumps(default_result, allow_nan=False)
    assert json.loads(text) == default_result
    assert default_result["config"] == {"order": 150, "n_train": 30, "noise": 0.1, "low_order": 3,
                                        "penalty_power": 4.0, "lam": None, "n_test": 1000, "seed": 0}


@pytest.mark.parametrize(("field", "value"), [
    ("order", 0), ("order", 2.5), ("n_train", 0), ("n_train", 1), ("noise", -0.1), ("noise", math.nan),
    ("low_order", 0), ("low_order", 200), ("penalty_power", 0.0), ("lam", -1.0), ("n_test", 1), ("seed", -1),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(UserError, match=rf"PolynomialConfig\.{field} "):
        run(PolynomialConfig(**{field: value}))


def test_unwritable_plot_fails_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match="plot"):
        run(PolynomialConfig(), plot=tmp_path / "a_file" / "x.png")
