"""MBOP: MBOP-Trajopt against a stub model whose dynamics and prior are known, the single-step rollout, and the
checkpoint's round trip and refusals."""

import pytest
import torch

from paperclub.dmpc import checkpoint, mbop
from paperclub.dmpc.mbop import Mbop, MbopConfig, MbopNormalizers, MbopPlanner, MbopTrainConfig, MppiConfig
from paperclub.dmpc.mlp import Transitions
from paperclub.dmpc.normalizer import Normalizer
from paperclub.errors import UserError

from .helpers import toy_dataset


def unit(dim):
    return Normalizer(torch.zeros(dim), torch.ones(dim))


class StubMbop:
    """1-D state and action, K = 2 members that both follow s' = s + a; the prior proposes `prior`; value 0."""

    def __init__(self, prior=0.0, horizon=3):
        self.cfg = MbopConfig(env="pendulum", obs_dim=1, act_dim=1, members=2, horizon=horizon)
        self.norms = MbopNormalizers(unit(1), unit(1), unit(1), unit(1), unit(1))
        self.prior = prior

    def prior_action(self, states, prev_actions):
        return torch.full_like(prev_actions, self.prior)

    def step(self, states, actions):
        return states + actions, torch.zeros(states.shape[:-1])

    def terminal_value(self, states, prev_actions):
        return torch.zeros(states.shape[0])


def stay_at_zero(states, actions):
    return -(states[..., 0] ** 2)


def plan_from(starts, kappa, **cfg):
    planner = MbopPlanner(StubMbop(), stay_at_zero, MppiConfig(trajectories=64, sigma=1.0, kappa=kappa,
                                                               value_weight=0.0, **cfg))
    return planner.plan(torch.tensor(starts).view(-1, 1, 1), torch.zeros(len(starts), 1, 1))[:, 0, 0]


def test_mppi_weights_the_trajectories_that_score_better():
    # from -3 the cost sum_k s_k^2 falls with positive actions, from +3 with negative ones, one batched call
    chosen = plan_from([-3.0, 3.0, 0.0], kappa=5.0)
    assert chosen[0] > 0.7 and chosen[1] < -0.7 and abs(chosen[2]) < 0.5, chosen
    # with kappa = 0 every trajectory weighs the same: the plan is the mean of the noisy prior, about 0
    flat = plan_from([-3.0, 3.0], kappa=0.0)
    assert flat.abs().max() < 0.4, flat


def test_the_previous_plan_is_mixed_in_and_kept_shifted_per_episode():
    planner = MbopPlanner(StubMbop(prior=1.0), stay_at_zero, MppiConfig(trajectories=4, sigma=0.0, beta=0.5,
                                                                        value_weight=0.0))
    s, a = torch.zeros(2, 2, 1), torch.zeros(2, 1, 1)
    first = planner.plan(s, a, ids=[7, 9])
    assert first.tolist() == [[[1.0]], [[1.0]]]  # no previous plan yet: the prior alone
    assert planner.plans[7].flatten().tolist() == [1.0, 1.0, 1.0]  # shifted by one, the last action repeated
    planner.plans[7] = torch.tensor([[10.0], [20.0], [30.0]])
    second = planner.plan(s[:1], a[:1], ids=[7])
    assert second.item() == pytest.approx(5.5)  # 0.5 * prior 1 + 0.5 * plan 10
    assert planner.plans[7].flatten().tolist() == pytest.approx([10.5, 15.5, 15.5])
    assert planner.plans[9].flatten().tolist() == [1.0, 1.0, 1.0]  # the other episode's plan is untouched
    planner.reset()
    assert planner.plans == {}


def test_trajectories_must_split_evenly_over_the_ensemble():
    with pytest.raises(UserError, match="must be a multiple of the MBOP ensemble size 2"):
        MbopPlanner(StubMbop(), stay_at_zero, MppiConfig(trajectories=5))


def small_model(members=3, obs_dim=3, act_dim=2):
    tr = Transitions.from_dataset(toy_dataset(obs_dim=obs_dim, act_dim=act_dim))
    cfg = MbopConfig(env="pendulum", obs_dim=obs_dim, act_dim=act_dim, members=members, hidden=8, layers=1)
    return Mbop(cfg, MbopNormalizers.fit(tr)), tr


def test_single_step_rollout_shapes_and_feedback():
    model, tr = small_model()
    states, rewards = model.step(torch.zeros(3, 5, 3), torch.zeros(3, 5, 2))
    assert states.shape == (3, 5, 3) and rewards.shape == (3, 5)
    pred = model.rollout(torch.zeros(4, 3), torch.zeros(4, 6, 2))
    assert pred.shape == (4, 6, 3)
    assert model.rollout(torch.zeros(4, 3), torch.zeros(4, 6, 2), member=1).shape == (4, 6, 3)
    # zero weights: every step adds the mean offset of the data (0.5 in the toy data), fed back step after step
    for p in model.dynamics.parameters():
        torch.nn.init.zeros_(p)
    pred = model.rollout(torch.zeros(2, 3), torch.zeros(2, 4, 2))
    torch.testing.assert_close(pred[0, :, 0], torch.tensor([0.5, 1.0, 1.5, 2.0]))


def test_transitions_zero_the_previous_action_at_episode_starts():
    data = toy_dataset(episode_lengths=(3, 2))
    tr = Transitions.from_dataset(data)
    assert tr.prev_act[[0, 3]].abs().sum() == 0
    torch.testing.assert_close(tr.prev_act[1], torch.as_tensor(data.actions[0]))
    torch.testing.assert_close(tr.prev_act[4], torch.as_tensor(data.actions[3]))


def test_training_round_trip_and_refusals(tmp_path):
    data = toy_dataset(episode_lengths=(20, 20))
    cfg = MbopTrainConfig(steps=60, batch_size=16, members=2, hidden=16, layers=1, horizon=4)
    first = mbop.train_mbop(data, tmp_path / "m", cfg, progress=False)
    assert set(first) == {"dynamics", "prior", "value"}
    model, config = mbop.load(tmp_path / "m", env="pendulum")
    assert config["format"] == "paperclub.dmpc.mbop/1" and model.cfg.members == 2 and model.cfg.horizon == 4
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "dynamics.safetensors",
                                                                  "prior.safetensors", "value.safetensors"]
    again, _ = mbop.load(tmp_path / "m")
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(UserError, match="is an MBOP checkpoint, not a D-MPC one: evaluate it with --planner mbop"):
        checkpoint.load(tmp_path / "m")
    with pytest.raises(UserError, match="trained for env pendulum, not hopper"):
        mbop.load(tmp_path / "m", env="hopper")
    (tmp_path / "m" / "prior.safetensors").write_bytes(b"\0" * 8)
    with pytest.raises(UserError, match="prior.safetensors cannot be loaded"):
        mbop.load(tmp_path / "m")


def test_the_learned_reward_head_can_replace_the_objective():
    class RewardHead(StubMbop):  # the ensemble's own reward: -(s_{t+1})^2
        def step(self, states, actions):
            nxt = states + actions
            return nxt, -(nxt[..., 0] ** 2)

    def never(states, actions):
        raise AssertionError("the objective must not be called with learned_reward")

    planner = MbopPlanner(RewardHead(), never, MppiConfig(trajectories=64, sigma=1.0, kappa=5.0, value_weight=0.0,
                                                          learned_reward=True))
    chosen = planner.plan(torch.tensor([-3.0, 3.0]).view(2, 1, 1), torch.zeros(2, 1, 1))[:, 0, 0]
    assert chosen[0] > 0.7 and chosen[1] < -0.7, chosen


def test_run_episodes_resets_stateful_planners_and_passes_episode_ids():
    from paperclub.dmpc.evaluate import run_episodes

    class Recording:
        needs_ids = True

        def __init__(self):
            self.resets, self.ids = 0, []

        def reset(self):
            self.resets += 1

        def plan(self, states, actions, ids=None):
            self.ids.append(list(ids))
            return torch.zeros(len(states), 1, 1)

    planner = Recording()
    run_episodes("pendulum", planner, 3, seed=0, history=1, progress=False)
    assert planner.resets == 1 and len(planner.ids) == 200 and all(i == [0, 1, 2] for i in planner.ids)
