import json

import pytest
import torch

from paperclub.dmpc import checkpoint
from paperclub.dmpc.denoiser import DenoiserConfig
from paperclub.dmpc.train import TrainConfig, train
from paperclub.errors import UserError

from .helpers import toy_dataset


def tiny(steps: int, **kw) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=8, save_every=5, horizon=2, history=1,
                       denoiser=DenoiserConfig(d_model=16, layers=1, heads=2), **kw)


def weights(path):
    return {p: (path / f"{p}.safetensors").read_bytes() for p in checkpoint.PARTS}


def test_resumed_training_equals_an_uninterrupted_run_and_a_finished_run_is_a_no_op(tmp_path):
    data = toy_dataset(episode_lengths=(10, 12))
    straight = tiny(10)
    straight.save_every = 1000  # saving must not change the run (no RNG drawn)
    train(data, tmp_path / "straight", straight, progress=False)
    train(data, tmp_path / "resumed", tiny(5), progress=False)
    train(data, tmp_path / "resumed", tiny(10), progress=False)
    assert weights(tmp_path / "resumed") == weights(tmp_path / "straight")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "resumed").iterdir()}
    train(data, tmp_path / "resumed", tiny(10), progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "resumed").iterdir()} == before
    config = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert config["step"] == 10 and config["model"]["horizon"] == 2 and config["model"]["env"] == "pendulum"


def test_resuming_with_another_model_or_data_is_refused(tmp_path):
    train(toy_dataset(), tmp_path / "ck", tiny(5), progress=False)
    cfg = tiny(10)
    cfg.horizon = 3
    with pytest.raises(UserError, match=r"holds a run with another model \(horizon 2 -> 3\)"):
        train(toy_dataset(), tmp_path / "ck", cfg, progress=False)
    with pytest.raises(UserError, match="env pendulum -> walker2d"):
        train(toy_dataset(env="walker2d"), tmp_path / "ck", tiny(10), progress=False)


def test_checkpoint_for_another_env_and_corrupt_checkpoints_are_refused(tmp_path):
    train(toy_dataset(), tmp_path / "ck", tiny(5), progress=False)
    model, _ = checkpoint.load(tmp_path / "ck", env="pendulum")
    assert not model.training
    with pytest.raises(UserError, match="trained for env pendulum, not walker2d: pass --env pendulum"):
        checkpoint.load(tmp_path / "ck", env="walker2d")
    with pytest.raises(UserError, match="is not a D-MPC checkpoint"):
        checkpoint.load(tmp_path)
    (tmp_path / "ck" / "value.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(UserError, match="value.safetensors cannot be loaded"):
        checkpoint.load(tmp_path / "ck")


def test_finetuning_the_dynamics_leaves_proposal_and_value_byte_identical(tmp_path):
    train(toy_dataset(seed=0), tmp_path / "base", tiny(5), progress=False)
    play = toy_dataset(seed=1)
    play.next_observations = play.next_observations + 1.0  # changed physics
    train(play, tmp_path / "tuned", tiny(5), parts=("dynamics",), init=tmp_path / "base", progress=False)
    base, tuned = weights(tmp_path / "base"), weights(tmp_path / "tuned")
    assert tuned["proposal"] == base["proposal"] and tuned["value"] == base["value"]
    assert tuned["dynamics"] != base["dynamics"]
    a, _ = checkpoint.load(tmp_path / "base")
    b, _ = checkpoint.load(tmp_path / "tuned")
    assert b.norms.to_dict() == a.norms.to_dict()  # the proposal and value see the inputs they were trained on
    assert any(not torch.equal(x, y) for x, y in zip(a.dynamics.parameters(), b.dynamics.parameters(), strict=True))


def test_the_prediction_target_is_saved_loaded_and_defaults_to_epsilon_for_older_checkpoints(tmp_path):
    train(toy_dataset(), tmp_path / "x0", tiny(5, prediction="sample"), progress=False)
    model, _ = checkpoint.load(tmp_path / "x0")
    assert model.cfg.prediction == "sample"
    assert model.proposal.diffusion.scheduler.config.prediction_type == "sample"
    assert model.dynamics.diffusion.prediction == "sample"
    with pytest.raises(UserError, match=r"another model \(prediction sample -> epsilon\)"):
        train(toy_dataset(), tmp_path / "x0", tiny(10), progress=False)
    config_path = tmp_path / "x0" / "config.json"
    config = json.loads(config_path.read_text())
    del config["model"]["prediction"]  # a checkpoint written before the option existed
    config_path.write_text(json.dumps(config))
    assert checkpoint.read_config(tmp_path / "x0")["model"].get("prediction") is None
    assert checkpoint.load(tmp_path / "x0")[0].cfg.prediction == "epsilon"


def test_training_one_part_from_scratch_writes_a_loadable_checkpoint(tmp_path):
    train(toy_dataset(), tmp_path / "dyn", tiny(5), parts=("dynamics",), progress=False)
    model, config = checkpoint.load(tmp_path / "dyn")
    assert config["parts_trained"] == ["dynamics"]


def test_a_value_ensemble_trained_for_a_checkpoint_keeps_its_proposal_and_dynamics(tmp_path):
    data = toy_dataset(episode_lengths=(30, 40))
    train(data, tmp_path / "base", tiny(5), progress=False)
    cfg = tiny(40, value_members=3)
    train(data, tmp_path / "ens", cfg, parts=("value",), init=tmp_path / "base", progress=False)
    base, ens = weights(tmp_path / "base"), weights(tmp_path / "ens")
    assert ens["proposal"] == base["proposal"] and ens["dynamics"] == base["dynamics"]
    model, config = checkpoint.load(tmp_path / "ens")
    assert config["model"]["value_members"] == 3 and model.value.members == 3
    # the members start apart and stay apart; each is fitted to the returns (the loss falls from the start's)
    s = torch.randn(7, data.observations.shape[1])
    with torch.no_grad():
        members = model.value(model.norms.obs.normalize(s))
    assert members.shape == (3, 7) and float(members.std(0).mean()) > 1e-3
    assert config["losses"]["value"] < 1.0  # returns are normalized: predicting their mean gives ~1
    # the pessimistic value, by hand from the members in return units
    v = model.norms.ret.unnormalize(members[..., None])[..., 0]
    plans = s[:, None].expand(7, 2, -1)  # F = 2 predicted states ending at s: an MLP value reads only the last
    ctx, acts = torch.zeros(7, 2, 5), torch.zeros(7, 2, 2)
    value = lambda model, **kw: model.terminal_value(ctx, acts, plans, **kw)  # noqa: E731
    torch.testing.assert_close(value(model), v.mean(0))
    torch.testing.assert_close(value(model, pessimism=2.0), v.mean(0) - 2.0 * v.std(0, unbiased=False))
    # resumable like any training run; a one-member checkpoint (every older one) is unchanged by pessimism
    train(data, tmp_path / "ens", tiny(60, value_members=3), parts=("value",), init=tmp_path / "base",
          progress=False)
    assert json.loads((tmp_path / "ens" / "config.json").read_text())["step"] == 60
    one, one_config = checkpoint.load(tmp_path / "base")
    assert one_config["model"]["value_members"] == 1
    torch.testing.assert_close(value(one, pessimism=2.0), value(one))
    old_config = json.loads((tmp_path / "base" / "config.json").read_text())
    del old_config["model"]["value_members"]  # written before ensembles
    (tmp_path / "base" / "config.json").write_text(json.dumps(old_config))
    torch.testing.assert_close(value(checkpoint.load(tmp_path / "base")[0]), value(one))


def test_a_transformer_value_is_trained_on_the_return_after_the_plan_and_keeps_the_other_parts(tmp_path):
    data = toy_dataset(episode_lengths=(30, 40))
    train(data, tmp_path / "base", tiny(5), progress=False)
    cfg = tiny(400, value_members=2, value_arch="transformer", lr=1e-3)
    cfg.save_every = 400
    train(data, tmp_path / "tv", cfg, parts=("value",), init=tmp_path / "base", progress=False)
    base, tv = weights(tmp_path / "base"), weights(tmp_path / "tv")
    assert tv["proposal"] == base["proposal"] and tv["dynamics"] == base["dynamics"]
    model, config = checkpoint.load(tmp_path / "tv")
    assert config["model"]["value_arch"] == "transformer" and len(model.value.nets) == 2
    # fitted to G_{t+F} on every window with a step t+F: well inside the returns' spread (error 0.06, variance 0.92)
    from paperclub.dmpc.windows import Windows

    windows = Windows(data, 2, 1, discount=0.99)
    b = windows.batch(windows.valid, model.norms)
    with torch.no_grad():
        members = model.value(b["context"], b["actions"], b["future_states"])
    err = ((members - b["returns_after"]) ** 2)[:, b["has_after"]].mean()
    assert err < 0.2 * b["returns_after"][b["has_after"]].var()
    # older checkpoints (no value_arch in their config) load as the MLP value
    old = json.loads((tmp_path / "base" / "config.json").read_text())
    del old["model"]["value_arch"]
    (tmp_path / "base" / "config.json").write_text(json.dumps(old))
    assert checkpoint.load(tmp_path / "base")[0].cfg.value_arch == "mlp"
