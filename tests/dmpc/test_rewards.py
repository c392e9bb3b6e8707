import math

import pytest
import torch

from paperclub.dmpc.rewards import get_reward
from paperclub.errors import UserError


def test_pendulum_reward_by_hand():
    theta, thdot, u = 0.5, -2.0, 1.5
    s = torch.tensor([[[math.cos(theta), math.sin(theta), thdot]]])
    r = get_reward("pendulum", None)(s, torch.tensor([[[u]]]))
    assert r.shape == (1, 1)
    assert r.item() == pytest.approx(-(0.25 + 0.1 * 4.0 + 0.001 * 2.25), abs=1e-6)


def test_walker_task_reward_stops_after_the_fall():
    s = torch.zeros(1, 3, 17)
    s[0, :, 0] = torch.tensor([1.2, 0.5, 1.2])  # height: healthy, fallen, (would be) healthy again
    s[0, :, 8] = torch.tensor([2.0, 3.0, 4.0])  # forward velocity
    a = torch.full((1, 3, 6), 0.5)
    r = get_reward("walker2d", "task")(s, a)
    ctrl = 1e-3 * 6 * 0.25
    # step 1: velocity + healthy bonus; step 2 falls: its velocity counts, no bonus; step 3: nothing but the cost
    torch.testing.assert_close(r, torch.tensor([[2.0 + 1.0 - ctrl, 3.0 - ctrl, -ctrl]]))


def test_walker_named_rewards_prefer_what_they_say():
    s = torch.zeros(2, 1, 17)
    s[:, 0, 0] = torch.tensor([1.25, 1.5])  # second one higher
    s[:, 0, 8] = torch.tensor([1.0, -1.0])  # second one walks backwards
    a = torch.zeros(2, 1, 6)
    assert get_reward("walker2d", "jump")(s, a).argmax().item() == 1
    # jump ranks heights below standing too (1.0 over 0.9), pays upward (not downward) torso velocity, and pays at
    # least the 1 of staying alive
    low = torch.zeros(3, 1, 17)
    low[:, 0, 0] = torch.tensor([0.9, 1.0, 0.9])
    low[:, 0, 9] = torch.tensor([-0.5, 0.0, 0.2])
    torch.testing.assert_close(get_reward("walker2d", "jump")(low, torch.zeros(3, 1, 6)),
                               torch.tensor([[2.0], [3.0], [4.0]]))
    assert get_reward("walker2d", "backward")(s, a).argmax().item() == 1
    assert get_reward("walker2d", "task")(s, a).argmax().item() == 0
    s[:, 0, 1] = torch.tensor([0.0, 0.6])  # second one leans
    assert get_reward("walker2d", "balance")(s, a).argmax().item() == 0


def test_unknown_rewards_are_clear_errors():
    with pytest.raises(UserError, match="unknown reward 'jump' for env pendulum: choose task, or module:function"):
        get_reward("pendulum", "jump")
    with pytest.raises(UserError, match="unknown reward 'lunge' for env walker2d: choose task, jump, backward, bal"):
        get_reward("walker2d", "lunge")
    with pytest.raises(UserError, match="--reward nosuchmodule:f: cannot import it"):
        get_reward("walker2d", "nosuchmodule:f")


def test_module_function_rewards(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def up(states, actions):\n    return states[..., 0] * 2\n"
                                            "NOT_A_FUNCTION = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = get_reward("hopper", "my_rewards:up")
    assert fn(torch.ones(1, 2, 11), torch.zeros(1, 2, 3)).tolist() == [[2.0, 2.0]]
    with pytest.raises(UserError, match="NOT_A_FUNCTION is not a function"):
        get_reward("hopper", "my_rewards:NOT_A_FUNCTION")


def test_evaluation_sums_every_named_reward_on_the_real_transitions():
    """Runs planned for different objectives compare on the same measured rewards: each is the sum, over the
    episode's real transitions, of the reward on the state reached and the action taken."""
    import numpy as np

    from paperclub.dmpc.envs import make_env
    from paperclub.dmpc.evaluate import run_episodes

    class Constant:
        def plan(self, states, actions):
            return torch.full((len(states), 1, 6), 0.3)

    result = run_episodes("walker2d", Constant(), 2, seed=7, progress=False)
    assert set(result["rewards"]) == {"task", "jump", "backward", "balance"}
    for i in range(2):
        env = make_env("walker2d")
        env.reset(seed=7 + i)
        sums, done, real, heights = dict.fromkeys(result["rewards"], 0.0), False, 0.0, []
        while not done:
            action = np.full(6, 0.3, dtype=np.float32)  # as the planner gives it
            obs, reward, terminated, truncated, _ = env.step(action)
            s, a = torch.as_tensor(obs, dtype=torch.float32)[None, None], torch.tensor(action).float()[None, None]
            for name in sums:
                sums[name] += float(get_reward("walker2d", name)(s, a)[0, 0])
            real += reward
            heights.append(obs[0])
            done = terminated or truncated
        assert result["torso_height"]["per_episode"][i] == pytest.approx(np.mean(heights), rel=1e-6)
        for name, total in sums.items():
            assert result["rewards"][name]["per_episode"][i] == pytest.approx(total, rel=1e-6)
        assert result["returns"][i] == pytest.approx(real)
        # the task reward rebuilt from states tracks the env's own (velocity from the state vs a finite difference)
        assert sums["task"] == pytest.approx(real, abs=0.05 * abs(real) + 1.0)
