import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from paperclub.cli import main
from paperclub.errors import UserError
from paperclub.worldmodel.checkpoint import load_checkpoint
from paperclub.worldmodel.data import WindowSampler
from paperclub.worldmodel.ensemble import (
    ENSEMBLE_FILE,
    EnsembleConfig,
    EnsembleWM,
    LatentWindows,
    Member,
    encode_dataset,
    load_ensemble,
    member_losses,
    save_ensemble,
    train_ensemble,
)
from paperclub.worldmodel.model import frames_to_tensor
from paperclub.worldmodel.planner import cost, plan_cost

SMALL_PLAN = ["--episodes", "1", "--samples", "8", "--elites", "2", "--iterations", "1", "--horizon", "2",
              "--max-steps", "5", "--baseline-plans", "0", "--quiet"]


class Fixed(torch.nn.Module):
    """A member whose final latent is a fixed vector (to check the cost by hand)."""

    def __init__(self, z):
        super().__init__()
        self.z = torch.tensor(z)

    def imagine(self, z0, plan):
        return self.z.expand(z0.shape[0], plan.shape[1], -1)


class Base(torch.nn.Module):
    cfg = None


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.5])
def test_cost_is_mean_goal_distance_plus_weighted_spread(beta):
    members = [Fixed([1.0, 0.0]), Fixed([3.0, 2.0])]  # mean (2, 1); spread (-1, -1) and (1, 1)
    wm = EnsembleWM(Base(), members, beta=beta)
    z0, plans, goal = torch.zeros(4, 2), torch.zeros(4, 3, 2), torch.tensor([0.0, 1.0])
    # ||(2, 1) - (0, 1)||^2 = 4, spread: mean of 2 and 2 = 2
    torch.testing.assert_close(wm.plan_cost(z0, plans, goal, None), torch.full((4,), 4.0 + beta * 2.0))
    w = torch.tensor([[2.0, 0.0], [0.0, 0.5]])  # whitened: goal gap (4, 0) -> 16; spread (2, .5) -> 4.25 each
    torch.testing.assert_close(wm.plan_cost(z0, plans, goal, w), torch.full((4,), 16.0 + beta * 4.25))


def test_unit_weight_is_the_members_mean_cost(tiny_ckpt):
    model, _ = load_checkpoint(tiny_ckpt)
    torch.manual_seed(0)
    members = [Member(model.cfg).eval() for _ in range(3)]
    wm = EnsembleWM(model, members, beta=1.0)
    d, kA = model.cfg.latent_dim, model.cfg.action_block_dim
    z0, plans, goal = torch.randn(5, d), torch.rand(5, 3, kA) * 2 - 1, torch.randn(d)
    w = torch.randn(d, d)
    for whiten in (None, w):
        want = torch.stack([cost(m.imagine(z0, plans)[:, -1], goal, whiten) for m in members]).mean(0)
        torch.testing.assert_close(plan_cost(wm, z0, plans, goal, whiten), want, rtol=1e-4, atol=1e-4)
    # a model without `plan_cost` is scored by its rollout
    torch.testing.assert_close(plan_cost(model, z0, plans, goal, None), cost(model.rollout(z0, plans), goal))


def test_a_member_with_the_checkpoints_weights_imagines_as_the_checkpoint(tiny_ckpt):
    model, _ = load_checkpoint(tiny_ckpt)
    member = Member(model.cfg)
    member.action_encoder.load_state_dict(model.action_encoder.state_dict())
    member.predictor.load_state_dict(model.predictor.state_dict())
    d, kA = model.cfg.latent_dim, model.cfg.action_block_dim
    z0, plans = torch.randn(4, d), torch.rand(4, model.cfg.history + 2, kA)  # longer than the history
    with torch.no_grad():
        torch.testing.assert_close(member.imagine(z0, plans), model.imagine(z0, plans))


def test_latent_windows_are_the_encoded_frame_windows(tiny_ckpt, tworoom_data):
    model, _ = load_checkpoint(tiny_ckpt)
    latents = encode_dataset(model, tworoom_data, batch=64, progress=False)
    sampler = WindowSampler(tworoom_data, model.cfg.history, model.cfg.frameskip)
    z, a = LatentWindows(latents, sampler).sample(6, np.random.default_rng(5))
    frames, actions = sampler.sample(6, np.random.default_rng(5))
    with torch.no_grad():
        want = model.encode(frames_to_tensor(torch.from_numpy(frames)))
    torch.testing.assert_close(z, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(a.numpy(), actions)


def test_training_lowers_the_loss_and_the_file_round_trips(tiny_ckpt, tworoom_data, tmp_path):
    model, _ = load_checkpoint(tiny_ckpt)
    cfg = EnsembleConfig(members=2, steps=150, batch_size=32, warmup=10, lr=3e-3)
    members, report = train_ensemble(model, tworoom_data, cfg, progress=False)
    latents = encode_dataset(model, tworoom_data, progress=False)
    windows = LatentWindows(latents, WindowSampler(tworoom_data, model.cfg.history, model.cfg.frameskip))
    z, a = windows.sample(256, np.random.default_rng(0))
    with torch.no_grad():
        untrained = sum(member_losses(Member(model.cfg).eval(), z, a))
        trained = [sum(member_losses(m, z, a)) for m in members]
    assert all(t < 0.5 * untrained for t in trained), (trained, untrained)
    assert [s["seed"] for s in report["members"]] == [0, 1]
    assert not torch.equal(members[0].predictor.out.weight, members[1].predictor.out.weight)

    save_ensemble(tmp_path, members, cfg, "data.h5")
    loaded = load_ensemble(tmp_path, model.cfg)
    assert len(loaded) == 2
    plans = torch.rand(3, 2, model.cfg.action_block_dim)
    with torch.no_grad():
        for m, n in zip(members, loaded, strict=True):
            torch.testing.assert_close(m.imagine(z[:3, 0], plans), n.imagine(z[:3, 0], plans))
    assert load_ensemble(tmp_path / "missing", model.cfg) is None

    state = load_file(str(tmp_path / ENSEMBLE_FILE))
    nan = {k: (v * float("nan") if i == 0 else v) for i, (k, v) in enumerate(state.items())}
    (tmp_path / "nan").mkdir()
    save_file(nan, str(tmp_path / "nan" / ENSEMBLE_FILE))
    with pytest.raises(UserError, match="NaN"):
        load_ensemble(tmp_path / "nan", model.cfg)
    raw = (tmp_path / ENSEMBLE_FILE).read_bytes()
    (tmp_path / ENSEMBLE_FILE).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="truncated or corrupt.*lewm ensemble"):
        load_ensemble(tmp_path, model.cfg)


@pytest.mark.parametrize("bad", [{"members": 0}, {"steps": 0}, {"lr": 0.0}, {"rollout_weight": -1.0}])
def test_bad_config_is_a_user_error(bad):
    with pytest.raises(UserError):
        EnsembleConfig(**bad)


def test_cli_ensemble_then_plan(tiny_ckpt, tworoom_data_path, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    out = tmp_path / "plan.json"
    assert main(["lewm", "plan", "--ckpt", str(ckpt), "--ensemble", "on", *SMALL_PLAN]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lewm ensemble" in err
    report = tmp_path / "ens.json"
    assert main(["lewm", "ensemble", "--ckpt", str(ckpt), "--data", str(tworoom_data_path), "--members", "2",
                 "--steps", "5", "--batch-size", "8", "--json", str(report), "--quiet"]) == 0
    assert len(json.loads(report.read_text())["members"]) == 2
    assert main(["lewm", "plan", "--ckpt", str(ckpt), "--json", str(out), "--disagreement", "2", *SMALL_PLAN]) == 0
    result = json.loads(out.read_text())
    assert result["ensemble_members"] == 2 and result["disagreement_weight"] == 2.0
    # without the flag: the weight the checkpoint's config.json was measured with, else 1
    assert main(["lewm", "plan", "--ckpt", str(ckpt), "--json", str(out), *SMALL_PLAN]) == 0
    assert json.loads(out.read_text())["disagreement_weight"] == 1.0
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "plan_defaults": {"disagreement": 4}}))
    assert main(["lewm", "plan", "--ckpt", str(ckpt), "--json", str(out), *SMALL_PLAN]) == 0
    assert json.loads(out.read_text())["disagreement_weight"] == 4.0
    assert main(["lewm", "plan", "--ckpt", str(ckpt), "--json", str(out), "--disagreement", "0", *SMALL_PLAN]) == 0
    assert json.loads(out.read_text())["disagreement_weight"] == 0.0
    # one weight per goal cost: the plan's cost picks its own (a cost the table does not name gets 1)
    per_cost = {"disagreement": {"graph": 1.5, "latent": 3}}
    (ckpt / "config.json").write_text(json.dumps({**config, "plan_defaults": per_cost}))
    for goal_cost, want in (("latent", 3.0), ("auto", 3.0), ("step", 1.0)):  # auto: no metric in this checkpoint
        if goal_cost == "step":
            assert main(["lewm", "metric", "--ckpt", str(ckpt), "--data", str(tworoom_data_path)]) == 0
        assert main(["lewm", "plan", "--ckpt", str(ckpt), "--json", str(out), "--cost", goal_cost, *SMALL_PLAN]) == 0
        assert json.loads(out.read_text())["disagreement_weight"] == want, goal_cost
    capsys.readouterr()
    for bad in ("high", -2, {"step": "x"}):
        (ckpt / "config.json").write_text(json.dumps({**config, "plan_defaults": {"disagreement": bad}}))
        assert main(["lewm", "plan", "--ckpt", str(ckpt), *SMALL_PLAN]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "plan_defaults.disagreement" in err
    (ckpt / "config.json").write_text(json.dumps(config))
    assert main(["lewm", "plan", "--ckpt", str(ckpt), "--json", str(out), "--ensemble", "off", *SMALL_PLAN]) == 0
    assert json.loads(out.read_text())["ensemble_members"] == 0
    capsys.readouterr()
    for bad in ("-1", "nan", "inf"):
        assert main(["lewm", "plan", "--ckpt", str(ckpt), "--disagreement", bad, *SMALL_PLAN]) == 2
        assert "disagreement" in capsys.readouterr().err
    saved = (ckpt / ENSEMBLE_FILE).read_bytes()
    for damaged in (saved[: len(saved) // 3], b""):
        (ckpt / ENSEMBLE_FILE).write_bytes(damaged)
        assert main(["lewm", "plan", "--ckpt", str(ckpt), *SMALL_PLAN]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(ckpt / ENSEMBLE_FILE) in err and "lewm ensemble" in err, err
    (ckpt / ENSEMBLE_FILE).write_bytes(saved)
    # training changes the encoder the members read: the ensemble is dropped
    assert main(["lewm", "train", "--env", "tworoom", "--out", str(ckpt), "--resume", "--steps", "31",
                 "--data", str(tworoom_data_path), "--quiet"]) == 0
    assert not (ckpt / ENSEMBLE_FILE).exists()


def test_the_step_metric_loss_weighs_errors_as_planning_does():
    member = Fixed([0.0, 0.0])
    member.predict = lambda z, a: z[:, :-1] * 0 + torch.tensor([1.0, 1.0])  # error (1, 1) on every token
    z, a = torch.zeros(2, 3, 2), torch.zeros(2, 3, 4)
    z[:, 1:] = torch.tensor([0.0, 0.0])
    w = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    tf, _ = member_losses(member, z, a)
    tf_w, _ = member_losses(member, z, a, w)
    assert float(tf) == pytest.approx(1.0) and float(tf_w) == pytest.approx((9 + 1) / 2)


def test_step_loss_needs_the_checkpoints_metric(tiny_ckpt, tworoom_data_path, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    (ckpt / "goal_metric.safetensors").unlink(missing_ok=True)
    args = ["lewm", "ensemble", "--ckpt", str(ckpt), "--data", str(tworoom_data_path), "--members", "1",
            "--steps", "3", "--batch-size", "8", "--loss", "step", "--quiet"]
    assert main(args) == 2
    assert "lewm metric" in capsys.readouterr().err
    assert main(["lewm", "metric", "--ckpt", str(ckpt), "--data", str(tworoom_data_path)]) == 0
    capsys.readouterr()
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["loss_metric"] == "step"
    assert "val_pred_loss_step_metric" in report["members"][0]
