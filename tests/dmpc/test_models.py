import pytest
import torch

from paperclub.dmpc.dataset import discounted_returns
from paperclub.dmpc.denoiser import Denoiser, DenoiserConfig
from paperclub.dmpc.models import ModelConfig, TrajectoryModel
from paperclub.dmpc.normalizer import Normalizer
from paperclub.dmpc.windows import Windows

from .helpers import toy_dataset

SMALL = DenoiserConfig(d_model=16, layers=1, heads=2)


def test_normalizer_round_trip_and_statistics():
    x = torch.randn(1000, 4) * torch.tensor([1.0, 10.0, 0.1, 0.0]) + torch.tensor([5.0, -3.0, 0.0, 2.0])
    norm = Normalizer.fit(x)
    z = norm.normalize(x)
    torch.testing.assert_close(z[:, :3].mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:, :3].std(0), torch.ones(3), atol=1e-5, rtol=0)
    assert norm.std[3] == 1e-3  # a constant dimension keeps a floor, not a division by zero
    torch.testing.assert_close(norm.unnormalize(z), x, atol=1e-4, rtol=1e-5)
    again = Normalizer.from_dict(norm.to_dict())
    torch.testing.assert_close(again.normalize(x), z)


def test_denoiser_and_model_shapes():
    den = Denoiser(x_dim=3, horizon=5, context_dim=7, step_cond_dim=2, cfg=SMALL)
    out = den(torch.randn(4, 5, 3), torch.tensor([0, 10, 500, 999]), torch.randn(4, 2, 7), torch.randn(4, 5, 2))
    assert out.shape == (4, 5, 3)
    data = toy_dataset()
    windows = Windows(data, horizon=3, history=2, discount=0.9)
    cfg = ModelConfig(env="pendulum", obs_dim=3, act_dim=2, horizon=3, history=2, denoiser=SMALL, value_hidden=8)
    model = TrajectoryModel(cfg, windows.fit_normalizers())
    batch = windows.sample(6, model.norms, torch.Generator().manual_seed(0))
    assert batch["context"].shape == (6, 3, 5) and batch["actions"].shape == (6, 3, 2)
    assert batch["deltas"].shape == (6, 3, 3) and batch["returns"].shape == (6,)
    actions = model.propose(batch["context"], steps=2)
    assert actions.shape == (6, 3, 2)
    states = model.predict(batch["context"], torch.zeros(6, 3), actions, steps=2)
    assert states.shape == (6, 3, 3)
    assert model.terminal_value(batch["context"], actions, states).shape == (6,)


def test_windows_stay_inside_episodes_and_pad_the_history():
    data = toy_dataset(episode_lengths=(5, 7))
    windows = Windows(data, horizon=3, history=2, discount=0.5)
    # an episode of length L has L - F + 1 windows: rows 0..2 and 5..9
    assert windows.valid.tolist() == [0, 1, 2, 5, 6, 7, 8, 9]
    ident = Normalizer(torch.zeros(3), torch.ones(3))
    norms = windows.fit_normalizers()
    norms.obs, norms.act = ident, Normalizer(torch.zeros(2), torch.ones(2))
    norms.delta = Normalizer(torch.zeros(9), torch.ones(9))  # F * S
    b = windows.batch(torch.tensor([6]), norms)  # second episode's second step
    # history s_4 (before the episode: padded with s_5, zero action), s_5 with a_5, then s_6
    assert b["context"][0, :, 0].tolist() == [5.0, 5.0, 6.0]
    assert b["context"][0, 0, 3:].tolist() == [0.0, 0.0]
    torch.testing.assert_close(b["context"][0, 1, 3:], torch.as_tensor(data.actions[5]))
    assert b["context"][0, 2, 3:].tolist() == [0.0, 0.0]
    # future states s_7..s_9 as offsets from s_6 (next_observations = obs + 0.5)
    assert b["deltas"][0, :, 0].tolist() == [0.5, 1.5, 2.5]
    torch.testing.assert_close(b["actions"][0], torch.as_tensor(data.actions[6:9]))


def test_discounted_returns_by_hand():
    data = toy_dataset(episode_lengths=(3, 2))
    assert discounted_returns(data, 0.5).tolist() == [1.75, 1.5, 1.0, 1.5, 1.0]


def test_windows_hold_the_return_from_the_state_a_window_reaches():
    data = toy_dataset(episode_lengths=(5, 7))
    windows = Windows(data, horizon=3, history=1, discount=0.5)
    norms = windows.fit_normalizers()
    norms.obs = Normalizer(torch.zeros(3), torch.ones(3))
    norms.ret = Normalizer(torch.zeros(1), torch.ones(1))
    returns = discounted_returns(data, 0.5)
    b = windows.batch(torch.tensor([0, 1, 2, 6, 9]), norms)
    # s_{t+F} is row t + 3 while that row is in t's episode (rows 0-4 and 5-11); the last window of each has none
    assert b["has_after"].tolist() == [True, True, False, True, False]
    torch.testing.assert_close(b["returns_after"][[0, 1, 3]], torch.as_tensor(returns[[3, 4, 9]]).float())
    # the plan's states s_{t+1..t+F} (next_observations = obs + 0.5)
    assert b["future_states"][3, :, 0].tolist() == [6.5, 7.5, 8.5]


def test_a_transformer_value_reads_the_whole_plan():
    data = toy_dataset()
    windows = Windows(data, horizon=3, history=1, discount=0.9)
    cfg = ModelConfig(env="pendulum", obs_dim=3, act_dim=2, horizon=3, history=1, denoiser=SMALL, value_members=2,
                      value_arch="transformer")
    model = TrajectoryModel(cfg, windows.fit_normalizers()).eval()
    batch = windows.sample(6, model.norms, torch.Generator().manual_seed(0))
    actions = model.norms.act.unnormalize(batch["actions"])
    states = model.norms.obs.unnormalize(batch["future_states"])
    v = model.terminal_value(batch["context"], actions, states)
    assert v.shape == (6,)
    # not just the last state: another earlier step, action or context changes the value
    for changed in (model.terminal_value(batch["context"], actions, states + torch.tensor([1.0, 0.0, 0.0])[:, None]),
                    model.terminal_value(batch["context"], actions + 1.0, states),
                    model.terminal_value(batch["context"] + 1.0, actions, states)):
        assert (changed - v).abs().min() > 1e-6
    with pytest.raises(ValueError, match="value_arch 'lstm'"):
        TrajectoryModel(ModelConfig(env="pendulum", obs_dim=3, act_dim=2, value_arch="lstm"), model.norms)
