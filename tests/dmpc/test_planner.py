"""SSR against a stub model whose proposals and dynamics are known: the planner must pick what a hand
computation picks, per environment, in one batched call."""

import pytest
import torch

from paperclub.dmpc.models import ModelConfig, Normalizers
from paperclub.dmpc.normalizer import Normalizer
from paperclub.dmpc.planner import History, PlannerConfig, RandomPlanner, SSRPlanner

# four candidate action sequences (F = 2, one action dim), the same for every environment
CANDIDATES = torch.tensor([[-1.0, -1.0], [0.0, 0.0], [0.5, 0.5], [1.0, 1.0]])[:, :, None]


class StubModel:
    """Proposals: CANDIDATES; dynamics: s_{t+k} = s_t + a_t + ... + a_{t+k-1}; value: 100 * s."""

    def __init__(self):
        self.cfg = ModelConfig(env="pendulum", obs_dim=1, act_dim=1, horizon=2, history=0)
        ident = Normalizer(torch.zeros(1), torch.ones(1))
        self.norms = Normalizers(ident, ident, ident, ident)

    def propose(self, context, steps=None, generator=None):
        return CANDIDATES.repeat(context.shape[0] // len(CANDIDATES), 1, 1)

    def predict(self, context, state, actions, steps=None, generator=None, noise=None):
        return state[:, None] + actions.cumsum(dim=1)

    def terminal_value(self, context, actions, states, pessimism=0.0):
        # as if value members agreed at s = 0 and spread by 300 |s| away from it (std 300 |s|)
        end = states[:, -1, 0]
        return 100.0 * end - pessimism * 300.0 * end.abs()


def stay_at_zero(states, actions):
    return -(states[..., 0] ** 2)


def plan(start_states, **cfg):
    planner = SSRPlanner(StubModel(), stay_at_zero, PlannerConfig(candidates=len(CANDIDATES), **cfg))
    states = torch.tensor(start_states).view(-1, 1, 1)
    return planner.plan(states, torch.zeros(len(start_states), 0, 1))


def test_ssr_picks_the_best_candidate_per_environment():
    # by hand, cost sum_k s_k^2:  from 0: [5, 0, 1.25, 5] -> 0.0;  from -3: [41, 18, 10.25, 5] -> 1.0;
    # from 1.2: [0.68, 2.88, 7.33, 14.6] -> -1.0
    chosen = plan([0.0, -3.0, 1.2], value_weight=0.0)
    assert chosen.shape == (3, 1, 1)
    assert chosen[:, 0, 0].tolist() == [0.0, 1.0, -1.0]


def test_the_terminal_value_enters_the_score_and_chunks_are_returned_whole():
    chosen = plan([0.0], value_weight=1.0, chunk=2)  # V = 100 * s_{t+F} outweighs the cost: the largest sum wins
    assert chosen.tolist() == [[[1.0], [1.0]]]


def test_a_pessimistic_value_turns_the_pick_away_from_where_the_value_members_disagree():
    assert plan([0.0], value_weight=1.0)[0, 0, 0] == 1.0  # the mean value pulls toward s = 2
    assert plan([0.0], value_weight=1.0, value_pessimism=1.0)[0, 0, 0] == 0.0  # 100 s - 300 |s|: stay at 0


def test_the_terminal_value_counts_only_while_the_predicted_robot_is_healthy():
    class Walker(StubModel):  # walker2d states: height first; dynamics leave the height and velocity unchanged
        def __init__(self):
            super().__init__()
            self.cfg = ModelConfig(env="walker2d", obs_dim=17, act_dim=1, horizon=2, history=0)

        def predict(self, context, state, actions, steps=None, generator=None, noise=None):
            return state[:, None].expand(-1, 2, -1)

        def terminal_value(self, context, actions, states, pessimism=0.0):
            return torch.full((len(states),), 10.0)

    planner = SSRPlanner(Walker(), lambda s, a: torch.zeros(s.shape[:2]), PlannerConfig(candidates=2))
    standing, fallen = torch.zeros(2, 2, 17), torch.zeros(2, 2, 17)
    standing[:, :, 0], fallen[:, :, 0] = 1.25, 0.5
    context = torch.zeros(2, 1, 18)
    assert planner.score(standing, torch.zeros(2, 2, 1), context).tolist() == [10.0, 10.0]
    assert planner.score(fallen, torch.zeros(2, 2, 1), context).tolist() == [0.0, 0.0]


def test_proposals_are_clipped_to_the_action_bounds():
    chosen = plan([-3.0], value_weight=0.0, low=(-0.5,), high=(0.5,))
    assert chosen[0, 0, 0].item() == 0.5


def test_random_planner_stays_in_bounds_and_history_pads():
    actions = RandomPlanner([-2.0, 0.0], [2.0, 1.0], seed=0, chunk=3).plan(torch.zeros(5, 1, 2), torch.zeros(5, 0, 2))
    assert actions.shape == (5, 3, 2)
    assert (actions[..., 0].abs() <= 2).all() and (actions[..., 1] >= 0).all() and (actions[..., 1] <= 1).all()
    assert actions[..., 0].std().item() == pytest.approx(4 / 12**0.5, rel=0.5)
    h = History(2, torch.tensor([1.0]).numpy(), act_dim=1)
    h.push(torch.tensor([0.5]).numpy(), torch.tensor([2.0]).numpy())
    states, acts = h.tensors()
    assert states[:, 0].tolist() == [1.0, 1.0, 2.0] and acts[:, 0].tolist() == [0.0, 0.5]


def test_candidates_are_the_proposals_and_their_predictions_environment_by_environment():
    planner = SSRPlanner(StubModel(), stay_at_zero, PlannerConfig(candidates=len(CANDIDATES)))
    proposals, predicted = planner.candidates(torch.tensor([0.0, -3.0]).view(2, 1, 1), torch.zeros(2, 0, 1))
    assert proposals.shape == (8, 2, 1) and predicted.shape == (1, 8, 2, 1)
    assert predicted[0, 4:, :, 0].tolist() == (-3.0 + CANDIDATES.cumsum(dim=1))[:, :, 0].tolist()


class NoisyStub(StubModel):
    """The stub's dynamics plus the sampler's starting noise, so that each predicted future shows its noise."""

    def predict(self, context, state, actions, steps=None, generator=None, noise=None):
        return state[:, None] + actions.cumsum(dim=1) + 3.0 * noise


def test_several_futures_share_noise_across_candidates_and_j_is_their_mean():
    m, starts = 3, torch.tensor([-3.0, 0.5]).view(2, 1, 1)
    planner = SSRPlanner(NoisyStub(), stay_at_zero, PlannerConfig(candidates=4, dynamics_samples=m,
                                                                  value_weight=0.0, seed=11))
    proposals, predicted = planner.candidates(starts, torch.zeros(2, 0, 1))
    assert predicted.shape == (m, 8, 2, 1)
    noise = predicted - (starts.repeat_interleave(4, dim=0)[:, :, 0, None] + proposals.cumsum(dim=1))[None]
    for e in range(2):  # common random numbers: the four candidates of one environment share each future's noise
        rows = noise[:, 4 * e: 4 * e + 4]
        assert torch.allclose(rows, rows[:, :1].expand_as(rows))
    assert not torch.allclose(noise[0, :4], noise[1, :4]) and not torch.allclose(noise[0, :4], noise[0, 4:])
    # by hand: the same draws (one (E, M, F, S) tensor from the seed), the cost summed over steps, averaged over M
    draws = 3.0 * torch.randn((2, m, 2, 1), generator=torch.Generator().manual_seed(11))
    start = starts[:, 0, 0]
    future = start[:, None, None, None] + CANDIDATES.cumsum(dim=1)[None, None, :, :, 0] + draws[:, :, None, :, 0]
    want = (-(future**2).sum(-1)).mean(1).argmax(dim=1)  # (E,)
    replan = SSRPlanner(NoisyStub(), stay_at_zero, PlannerConfig(candidates=4, dynamics_samples=m,
                                                                 value_weight=0.0, seed=11))
    chosen = replan.plan(starts, torch.zeros(2, 0, 1))[:, 0, 0]
    assert chosen.tolist() == CANDIDATES[want, 0, 0].tolist()


def test_a_history_copy_is_independent():
    h = History(1, torch.tensor([1.0]).numpy(), act_dim=1)
    twin = h.copy()
    twin.push(torch.tensor([0.5]).numpy(), torch.tensor([2.0]).numpy())
    assert h.tensors()[0][:, 0].tolist() == [1.0, 1.0] and h.tensors()[1][:, 0].tolist() == [0.0]
    assert twin.tensors()[0][:, 0].tolist() == [1.0, 2.0] and twin.tensors()[1][:, 0].tolist() == [0.5]
