import json

import numpy as np
import pytest
import torch

from paperclub.cli import main
from paperclub.errors import UserError
from paperclub.worldmodel.checkpoint import load_checkpoint
from paperclub.worldmodel.goal_metric import (
    METRIC_FILE,
    StepMetricConfig,
    fit_step_metric,
    load_step_metric,
    move_covariance,
    save_step_metric,
    whitening,
)
from paperclub.worldmodel.planner import CEMConfig, PlanConfig, cost, evaluate_planning


def test_move_covariance_by_hand():
    z = [np.array([[0.0, 0.0], [1.0, 2.0], [1.0, 0.0]]), np.array([[0.0, 0.0], [3.0, 0.0]])]
    # moves: (1, 2), (0, -2), (3, 0)
    want = (np.outer([1, 2], [1, 2]) + np.outer([0, -2], [0, -2]) + np.outer([3, 0], [3, 0])) / 3
    np.testing.assert_allclose(move_covariance(z, lag=1), want)
    np.testing.assert_allclose(move_covariance(z, lag=2), np.outer([1, 0], [1, 0]))  # only the first is long enough
    with pytest.raises(UserError, match="longer than"):
        move_covariance(z, lag=3)


def test_whitening_inverts_the_shrunk_covariance():
    a = np.random.default_rng(0).normal(size=(6, 6))
    sigma = a @ a.T
    w = whitening(sigma, shrink=0.05)
    eps = 0.05 * np.median(np.linalg.eigvalsh(sigma))
    np.testing.assert_allclose(w.T @ w, np.linalg.inv(sigma + eps * np.eye(6)), rtol=1e-8, atol=1e-10)


def test_whitened_cost_is_the_quadratic_form():
    rng = np.random.default_rng(1)
    w = torch.from_numpy(rng.normal(size=(4, 4)))
    z, g = torch.from_numpy(rng.normal(size=(3, 4))), torch.from_numpy(rng.normal(size=4))
    m = w.T @ w
    want = torch.stack([(zi - g) @ m @ (zi - g) for zi in z])
    torch.testing.assert_close(cost(z, g, w), want)
    torch.testing.assert_close(cost(z, g), ((z - g) ** 2).sum(1))


def test_the_metric_weighs_a_slow_variable_above_a_fast_one():
    """Coordinate 0 random-walks 1.0 per step (the pusher), coordinate 1 0.1 per step (the block): a unit gap in
    the slow one should cost (1 / 0.1)^2 = 100x a unit gap in the fast one, up to the shrinkage."""
    rng = np.random.default_rng(2)
    eps = [np.cumsum(rng.normal(size=(400, 2)) * [1.0, 0.1], axis=0) for _ in range(20)]
    w = torch.from_numpy(whitening(move_covariance(eps, 1), shrink=1e-4))
    fast = float(cost(torch.tensor([[1.0, 0.0]], dtype=w.dtype), torch.zeros(2, dtype=w.dtype), w)[0])
    slow = float(cost(torch.tensor([[0.0, 1.0]], dtype=w.dtype), torch.zeros(2, dtype=w.dtype), w)[0])
    assert fast == pytest.approx(1.0, rel=0.05) and slow == pytest.approx(100.0, rel=0.05)


def test_fit_save_load_round_trip(tiny_ckpt, tworoom_data, tmp_path):
    model, _ = load_checkpoint(tiny_ckpt)
    cfg = StepMetricConfig(max_episodes=4)
    w = fit_step_metric(model, tworoom_data, cfg)
    d = model.cfg.latent_dim
    assert w.shape == (d, d) and torch.isfinite(w).all()
    save_step_metric(tmp_path, w, cfg, "data.h5")
    torch.testing.assert_close(load_step_metric(tmp_path, d), w)
    assert load_step_metric(tmp_path / "missing", d) is None
    with pytest.raises(UserError, match=r"not a finite \(7, 7\)"):
        load_step_metric(tmp_path, 7)
    raw = (tmp_path / METRIC_FILE).read_bytes()
    (tmp_path / METRIC_FILE).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="truncated or corrupt.*lewm metric"):
        load_step_metric(tmp_path, d)


def test_cost_and_metric_must_agree(tiny_ckpt):
    model, _ = load_checkpoint(tiny_ckpt)
    cfg = PlanConfig(episodes=1, cost="step", cem=CEMConfig(samples=4, elites=2, iterations=1, horizon=1))
    with pytest.raises(ValueError, match="cost .step. with a NoneType metric"):
        evaluate_planning(model, "tworoom", cfg, progress=False)
    with pytest.raises(UserError, match="goal cost"):
        PlanConfig(cost="l2")


def test_cli_metric_and_plan_costs(tiny_ckpt, tworoom_data_path, tmp_path, capsys):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    (ckpt / METRIC_FILE).unlink(missing_ok=True)
    small = ["--episodes", "1", "--samples", "8", "--elites", "2", "--iterations", "1", "--horizon", "1",
             "--max-steps", "5", "--baseline-plans", "0", "--quiet"]
    out = tmp_path / "plan.json"
    assert main(["lewm", "plan", "--ckpt", str(ckpt), "--json", str(out), *small]) == 0
    assert json.loads(out.read_text())["cost"] == "latent"  # auto, and the checkpoint has no metric
    capsys.readouterr()
    assert main(["lewm", "plan", "--ckpt", str(ckpt), "--cost", "step", *small]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lewm metric" in err and "Traceback" not in err

    assert main(["lewm", "metric", "--ckpt", str(ckpt), "--data", str(tworoom_data_path), "--shrink", "0.1"]) == 0
    assert (ckpt / METRIC_FILE).is_file()
    assert main(["lewm", "plan", "--ckpt", str(ckpt), "--json", str(out), *small]) == 0
    assert json.loads(out.read_text())["cost"] == "step"
    capsys.readouterr()
    assert main(["lewm", "metric", "--ckpt", str(ckpt), "--data", str(tworoom_data_path), "--shrink", "0"]) == 2
    assert "shrink must be > 0" in capsys.readouterr().err


def test_train_writes_the_metric(tworoom_data_path, tmp_path):
    out = tmp_path / "run"
    assert main(["lewm", "train", "--env", "tworoom", "--config", "tiny", "--steps", "3", "--data",
                 str(tworoom_data_path), "--sigreg-directions", "16", "--out", str(out), "--quiet"]) == 0
    model, _ = load_checkpoint(out)
    assert load_step_metric(out, model.cfg.latent_dim).shape == (model.cfg.latent_dim,) * 2
    # more training changes the weights: the metric is fitted again on them, not kept
    first = (out / METRIC_FILE).read_bytes()
    assert main(["lewm", "train", "--env", "tworoom", "--out", str(out), "--resume", "--steps", "6", "--quiet"]) == 0
    assert (out / METRIC_FILE).read_bytes() != first
