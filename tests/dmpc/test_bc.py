import numpy as np
import pytest
import torch

from paperclub.dmpc import bc, checkpoint
from paperclub.dmpc.dataset import Dataset
from paperclub.errors import UserError


def linear_policy_dataset(n=3000, seed=0):
    """States N(0, 1) in 3 dims, actions a = W s + b exactly: a policy BC must recover."""
    rng = np.random.default_rng(seed)
    w = np.array([[1.0, -2.0, 0.5], [0.0, 0.3, -1.0]], dtype=np.float32)
    b = np.array([0.2, -0.1], dtype=np.float32)
    obs = rng.standard_normal((n, 3)).astype(np.float32)
    starts = np.zeros(n, dtype=bool)
    starts[::100] = True
    data = Dataset(observations=obs, actions=obs @ w.T + b, rewards=np.zeros(n, np.float32),
                   next_observations=obs, terminals=np.zeros(n, bool), timeouts=np.roll(starts, -1),
                   episode_starts=starts, env="pendulum", kind="toy")
    return data, w, b


def test_bc_recovers_a_known_linear_policy_and_round_trips(tmp_path):
    torch.set_num_threads(1)
    data, w, b = linear_policy_dataset()
    loss = bc.train_bc(data, tmp_path / "bc", bc.FitConfig(steps=1500, hidden=64, layers=2), progress=False)
    assert loss < 1e-3
    policy, config = bc.load(tmp_path / "bc", env="pendulum")
    assert config["format"] == "paperclub.dmpc.bc/1"
    held_out = np.random.default_rng(1).standard_normal((500, 3)).astype(np.float32) * 0.8  # inside the data
    pred = policy.act(torch.as_tensor(held_out)).numpy()
    true = held_out @ w.T + b
    rmse = np.sqrt(((pred - true) ** 2).mean(0))
    assert (rmse < 0.05 * true.std(0)).all(), rmse  # measured: about 0.3% of the action std
    untrained = bc.Policy(policy.cfg, policy.obs_norm, policy.act_norm)
    assert np.sqrt(((untrained.act(torch.as_tensor(held_out)).numpy() - true) ** 2).mean()) > 0.5


def test_policy_planner_shapes_and_kind_refusals(tmp_path):
    data, _, _ = linear_policy_dataset(n=300)
    bc.train_bc(data, tmp_path / "bc", bc.FitConfig(steps=5, hidden=8, layers=1), progress=False)
    policy, _ = bc.load(tmp_path / "bc")
    out = bc.PolicyPlanner(policy).plan(torch.zeros(5, 2, 3), torch.zeros(5, 1, 2))
    assert out.shape == (5, 1, 2)
    with pytest.raises(UserError, match="is a behaviour-cloning checkpoint, not a D-MPC one: evaluate it with "
                                        "--planner bc"):
        checkpoint.load(tmp_path / "bc")
    with pytest.raises(UserError, match="not a distilled-policy one"):
        bc.load(tmp_path / "bc", kind="distilled")
    with pytest.raises(UserError, match="is not a behaviour-cloning checkpoint \\(no config.json\\): make one with "
                                        "`paperclub dmpc train-bc`"):
        bc.load(tmp_path)
