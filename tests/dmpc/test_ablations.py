import pytest
import torch

from paperclub.dmpc.ablations import Hybrid
from paperclub.dmpc.denoiser import DenoiserConfig
from paperclub.dmpc.mbop import Mbop, MbopConfig, MbopNormalizers
from paperclub.dmpc.mlp import Transitions
from paperclub.dmpc.models import ModelConfig, TrajectoryModel, context_tokens
from paperclub.dmpc.windows import Windows
from paperclub.errors import UserError

from .helpers import toy_dataset


def models(history=1):
    data = toy_dataset(episode_lengths=(6, 6), obs_dim=3, act_dim=2)
    dmpc = TrajectoryModel(ModelConfig(env="pendulum", obs_dim=3, act_dim=2, horizon=3, history=history,
                                       denoiser=DenoiserConfig(16, 1, 2), value_hidden=8),
                           Windows(data, 3, history, 0.99).fit_normalizers()).eval()
    mbop = Mbop(MbopConfig(env="pendulum", obs_dim=3, act_dim=2, members=2, hidden=8, layers=1),
                MbopNormalizers.fit(Transitions.from_dataset(data))).eval()
    return dmpc, mbop


def test_single_step_dynamics_is_the_ensemble_rolled_out_and_the_proposal_stays_diffusion():
    torch.manual_seed(0)
    dmpc, mbop = models()
    hybrid = Hybrid(dmpc, mbop, dynamics="single-step")
    states, acts = torch.randn(4, 2, 3), torch.randn(4, 1, 2)
    context = context_tokens(states, acts, dmpc.norms)
    actions = torch.randn(4, 3, 2)
    torch.testing.assert_close(hybrid.predict(context, states[:, -1], actions), mbop.rollout(states[:, -1], actions))
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    torch.testing.assert_close(hybrid.propose(context, 2, gen()), dmpc.propose(context, 2, gen()))


def test_the_mlp_proposal_follows_the_prior_through_the_ensemble():
    torch.manual_seed(0)
    dmpc, mbop = models()
    hybrid = Hybrid(dmpc, mbop, proposal="mlp", sigma=0.0)
    states, acts = torch.randn(4, 2, 3), torch.randn(4, 1, 2)
    s, prev = hybrid._current(context_tokens(states, acts, dmpc.norms))
    torch.testing.assert_close(s, states[:, -1], atol=1e-5, rtol=0)  # read back from the context tokens
    torch.testing.assert_close(prev, acts[:, -1], atol=1e-5, rtol=0)
    proposed = hybrid.propose(context_tokens(states, acts, dmpc.norms))
    assert proposed.shape == (4, 3, 2)
    # by hand: a_0 = prior(s_t, a_{t-1}); s_{t+1} = ensemble mean; a_1 = prior(s_{t+1}, a_0)
    a0 = mbop.prior_action(states[:, -1], acts[:, -1])
    s1 = mbop.rollout(states[:, -1], a0[:, None])[:, 0]
    torch.testing.assert_close(proposed[:, 0], a0, atol=1e-4, rtol=0)
    torch.testing.assert_close(proposed[:, 1], mbop.prior_action(s1, a0), atol=1e-4, rtol=0)
    noisy = Hybrid(dmpc, mbop, proposal="mlp", sigma=1.0).propose(context_tokens(states, acts, dmpc.norms))
    assert (noisy - proposed).abs().mean() > 0.1


def test_ablations_need_the_mbop_parts_and_known_names():
    dmpc, mbop = models(history=0)
    with pytest.raises(UserError, match="pass --mbop DIR"):
        Hybrid(dmpc, None, dynamics="single-step")
    with pytest.raises(UserError, match="choose a proposal of diffusion, mlp"):
        Hybrid(dmpc, mbop, proposal="gan")
    s, prev = Hybrid(dmpc, mbop, proposal="mlp")._current(torch.zeros(2, 1, 5))
    assert prev.abs().sum() == 0 and s.shape == (2, 3)
