import h5py
import numpy as np
import pytest

from paperclub.errors import UserError
from paperclub.worldmodel.data import SCHEMA, CollectConfig, WindowSampler, load


def test_dataset_schema_and_layout(tworoom_data_path, tworoom_data):
    with h5py.File(tworoom_data_path) as f:
        assert f.attrs["schema"] == SCHEMA and f.attrs["env"] == "tworoom"
        assert f["frames"].compression == "gzip"
    d = tworoom_data
    assert d.num_episodes == 10 and (d.lengths == 61).all()
    assert d.frames.shape == (610, 64, 64, 3) and d.frames.dtype == np.uint8
    assert d.actions.shape == (610, 2) and d.proprio.shape == (610, 2)
    assert np.array_equal(d.starts, np.arange(10) * 61)
    # the last action of every episode is padding
    assert np.all(d.actions[d.starts + d.lengths - 1] == 0)
    # no temp files left by the atomic write
    assert [p.name for p in tworoom_data_path.parent.iterdir()] == [tworoom_data_path.name]


def test_windows_stay_inside_episodes_and_align_actions(tworoom_data, rng):
    s = WindowSampler(tworoom_data, history=3, frameskip=5)
    frames, actions = s.sample(64, rng)
    assert frames.shape == (64, 4, 64, 64, 3) and actions.shape == (64, 4, 10)
    episode_of = np.repeat(np.arange(10), 61)
    starts = s.window_starts
    assert np.all(episode_of[starts] == episode_of[starts + 15])
    for start in (7, starts[-1]):  # frames 5 steps apart from the start, and the blocks of 5 actions between them
        f, a = s.window(np.array([start]))
        for j in range(4):
            assert np.array_equal(f[0, j], tworoom_data.frames[start + 5 * j])
        for j in range(3):
            assert np.array_equal(a[0, j], tworoom_data.actions[start + 5 * j : start + 5 * j + 5].reshape(-1))
    # every sampled window is the window at one of the valid starts (found by its first frame)
    flat = tworoom_data.frames.reshape(len(tworoom_data.frames), -1)
    for k in range(len(frames)):
        candidates = starts[(flat[starts] == frames[k, 0].reshape(-1)).all(axis=1)]
        f, a = s.window(candidates)
        same = (f == frames[k]).all(axis=(1, 2, 3, 4)) & (a == actions[k]).all(axis=(1, 2))
        assert same.any(), k


def test_bad_inputs_raise_user_error(tmp_path, tworoom_data):
    with pytest.raises(UserError):
        load(tmp_path / "missing.h5")
    with pytest.raises(UserError):
        CollectConfig(episodes=0)
    with pytest.raises(UserError):
        WindowSampler(tworoom_data, history=3, frameskip=30)


def test_exploration_replaces_a_fraction_of_the_scripted_actions():
    from paperclub.worldmodel.data import run_episode
    from paperclub.worldmodel.envs import make_env

    env = make_env("tworoom", 32)
    plain = run_episode("tworoom", env, 200, seed=3)
    assert np.array_equal(run_episode("tworoom", env, 200, seed=3, explore=0.0)["actions"], plain["actions"])
    explored = run_episode("tworoom", env, 200, seed=3, explore=0.3)["actions"]
    assert np.array_equal(run_episode("tworoom", env, 200, seed=3, explore=0.3)["actions"], explored)  # seeded
    # the expert moves at full speed toward its waypoint; uniform actions are mostly slower, in any direction
    slow = np.linalg.norm(explored, axis=1) < 0.9
    assert 0.1 < slow.mean() < 0.5 and np.linalg.norm(plain["actions"], axis=1).mean() > 0.9
    with pytest.raises(UserError, match="--explore must be in"):
        CollectConfig(explore=1.5)


def test_held_exploration_repeats_random_actions_and_reaches_the_wall():
    from paperclub.worldmodel.data import run_episode
    from paperclub.worldmodel.envs import make_env
    from paperclub.worldmodel.envs.tworoom import STEP

    env = make_env("tworoom", 32)
    # hold 1 is the plain per-step exploration, draw for draw
    one = run_episode("tworoom", env, 200, seed=4, explore=0.3)["actions"]
    assert np.array_equal(run_episode("tworoom", env, 200, seed=4, explore=0.3, explore_hold=1)["actions"], one)

    def repeats(a):  # fraction of steps whose action is exactly the previous one
        return float(np.all(a[1:-1] == a[:-2], axis=1).mean())

    held = [run_episode("tworoom", env, 100, seed=s, explore=0.1, explore_hold=10) for s in range(20)]
    assert repeats(one) < 0.02 and 0.15 < np.mean([repeats(e["actions"]) for e in held]) < 0.5
    # long pushes run the agent into the wall and the arena's edge: steps where it could not move as commanded
    # (about 10% of steps against the expert's 2.5% and per-step exploration's 1.6%)
    def blocked(e):
        commanded = STEP * np.clip(e["actions"][:-1], -1, 1)
        return float((np.linalg.norm(np.diff(e["state"], axis=0) - commanded, axis=1) > 1e-6).mean())

    plain = [run_episode("tworoom", env, 100, seed=s, explore=0.3) for s in range(20)]
    assert np.mean([blocked(e) for e in held]) > 3 * np.mean([blocked(e) for e in plain])
    with pytest.raises(UserError, match="--explore-hold"):
        CollectConfig(explore_hold=0)
