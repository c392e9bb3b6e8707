import json

import numpy as np
import pytest

from paperclub.dmpc.collect import SacConfig, collect, medium_target
from paperclub.dmpc.dataset import load_dataset, save_dataset
from paperclub.errors import UserError


def test_random_and_play_rollouts_are_d4rl_shaped(tmp_path):
    data, _ = collect("pendulum", "random", tmp_path / "work", episodes=3, sac=SacConfig(seed=4), progress=False)
    assert len(data) == 600 and data.episode_starts.sum() == 3 and data.timeouts.sum() == 3
    assert data.episode_bounds() == [(0, 200), (200, 400), (400, 600)]
    assert not data.terminals.any()
    np.testing.assert_array_equal(data.observations[1:200], data.next_observations[:199])  # rows chain up
    assert np.abs(data.actions).max() <= 2.0 and data.actions.std() > 1.0  # uniform on [-2, 2]: std 1.15
    save_dataset(tmp_path / "r.h5", data)
    assert load_dataset(tmp_path / "r.h5").kind == "random"


def test_sac_collection_resumes_and_medium_replay_is_its_buffer(tmp_path):
    work = tmp_path / "work"
    sac = SacConfig(steps=300, eval_every=150, eval_episodes=1, learning_starts=100, seed=0)
    with pytest.raises(UserError, match=r"has not reached the medium return -887.8 in 300 steps.*larger --steps"):
        collect("pendulum", "medium", work, episodes=1, sac=sac, progress=False)
    state = json.loads((work / "state.json").read_text())
    assert state["steps"] == 300 and [h["steps"] for h in state["history"]] == [150, 300]
    # pretend the last evaluation reached medium (SAC needs thousands of steps to really get there)
    state["medium_target"] = -1e9
    (work / "state.json").write_text(json.dumps(state))
    sac.steps = 450
    data, extra = collect("pendulum", "medium-replay", work, episodes=1, sac=sac, progress=False)
    assert extra["sac_steps"] == 450 and extra["medium_at"] == 450  # resumed from 300, not restarted
    # the time limit at 200, the resume's fresh episode at 300 (after the one cut there), the snapshot's end
    assert len(data) == 450 and data.episode_bounds() == [(0, 200), (200, 300), (300, 450)]
    assert data.timeouts[[199, 299, 449]].all() and data.timeouts.sum() == 3 and not data.terminals.any()
    assert np.abs(data.actions).max() <= 2.0 and np.abs(data.actions).max() > 1.0  # env units, not SAC's [-1, 1]
    np.testing.assert_array_equal(data.observations[1:200], data.next_observations[:199])
    with pytest.raises(UserError, match="--rollout-seed does not apply to medium-replay"):
        collect("pendulum", "medium-replay", work, episodes=1, sac=sac, progress=False, rollout_seed=7)
    # a held-out rollout of the same snapshot: same policy, other starts; the default seed is SAC's + 20000
    a, extra_a = collect("pendulum", "medium", work, episodes=2, sac=sac, progress=False)
    b, extra_b = collect("pendulum", "medium", work, episodes=2, sac=sac, progress=False, rollout_seed=500)
    assert (extra_a["rollout_seed"], extra_b["rollout_seed"]) == (20_000, 500)
    assert extra_a["sac_steps"] == extra_b["sac_steps"] == 450  # no more training for either
    assert len(a) == len(b) == 400 and not np.allclose(a.observations[0], b.observations[0])


def test_medium_target_is_a_third_of_the_reference_range():
    assert medium_target("walker2d") == pytest.approx(1.629008 + (4592.3 - 1.629008) / 3)
    assert medium_target("pendulum") == pytest.approx(-1255.5 + 1103.1 / 3)


def test_play_data_is_collected_in_the_broken_ankle_with_noise(tmp_path):
    sac = SacConfig(steps=100, eval_every=100, eval_episodes=1, learning_starts=50, seed=0)
    data, extra = collect("walker2d", "play", tmp_path / "work", episodes=2, sac=sac, progress=False)
    assert (data.variant, data.kind, data.seed, extra["noise"]) == ("broken-ankle", "play", 0, 0.5)
    assert data.episode_starts.sum() == 2 and data.observations.shape[1] == 17
    with pytest.raises(UserError, match="unknown variant 'broken-ankle' for env hopper"):
        collect("hopper", "play", tmp_path / "w2", episodes=1, sac=sac, variant="broken-ankle", progress=False)
    assert not (tmp_path / "w2").exists()  # refused before any SAC training
