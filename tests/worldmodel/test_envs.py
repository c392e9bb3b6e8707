import numpy as np
import pytest

from paperclub.worldmodel.envs import make_env, make_policy
from paperclub.worldmodel.envs.pusht import PushTEnv
from paperclub.worldmodel.envs.tworoom import TwoRoomEnv, TwoRoomExpert


def test_tworoom_wall_blocks_and_door_lets_through():
    env = TwoRoomEnv()
    env.reset(seed=0)
    env.set_state(np.array([0.3, 0.15]))  # left room, level with the wall
    for _ in range(40):
        env.step(np.array([1.0, 0.0]))
    assert env.pos[0] < 0.5
    env.set_state(np.array([0.3, 0.5]))  # level with the door
    for _ in range(10):
        env.step(np.array([1.0, 0.0]))
    assert env.pos[0] > 0.5


def test_tworoom_expert_reaches_the_other_room(rng):
    env = TwoRoomEnv()
    env.reset(seed=1)
    env.set_state(np.array([0.2, 0.8]))
    expert = TwoRoomExpert(env, rng)
    target = np.array([0.8, 0.85])  # in the other room, behind the wall: only the way through the door gets there
    expert.target = target.copy()
    closest = min(np.linalg.norm(env.step(expert())[-1]["state"] - target) for _ in range(60))
    assert closest < 0.05  # arrived (the expert then picks a new target, so the end position says nothing)


def test_tworoom_render_reset_state_and_perturbations(rng):
    env = TwoRoomEnv(image_size=64)
    obs, info = env.reset(seed=5)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    obs2, _ = env.reset(seed=5)
    assert np.array_equal(obs, obs2)
    env.set_state(np.array([0.2, 0.2]))
    a = env.render()
    env.set_state(np.array([0.8, 0.8]))
    assert not np.array_equal(a, env.render())
    before = env.get_state()
    env.teleport(rng)
    assert np.linalg.norm(env.get_state() - before) >= 0.3
    frame = env.render()
    env.change_color()
    assert not np.array_equal(frame, env.render())
    # success: within success_tol (0.08) of the goal position
    here = env.get_state()
    assert env.is_success(here + [0.07, 0.0]) and not env.is_success(here + [0.0, 0.09])


def test_pusht_pushing_moves_block_and_idle_does_not():
    env = PushTEnv()
    env.reset(seed=0)
    env.set_state(np.array([100.0, 256.0, 256.0, 256.0, 0.0]))
    for _ in range(5):
        env.step(np.zeros(2))
    assert np.allclose(env.get_state()[2:4], [256, 256], atol=1e-3)
    for _ in range(20):
        env.step(np.array([1.0, 0.0]))
    assert env.get_state()[2] > 280  # pushed to the right
    # success: the block within pos_tol (20) and angle_tol (pi/9, 0.35 rad) of the goal's block pose
    s = env.get_state()
    near = s.copy()
    near[2:5] += [12.0, -12.0, 0.3]
    assert env.is_success(near)
    moved = s.copy()
    moved[2] += 25
    assert not env.is_success(moved)
    rotated = s.copy()
    rotated[4] += 0.4
    assert not env.is_success(rotated)


def test_pusht_render_state_roundtrip_and_policy(rng):
    env = make_env("pusht")
    obs, info = env.reset(seed=2)
    assert obs.shape == (64, 64, 3) and info["proprio"].shape == (4,)
    s = env.get_state()
    policy = make_policy("pusht", env, rng)
    for _ in range(30):
        env.step(policy())
    assert env.action_space.contains(policy())
    assert not np.allclose(env.get_state(), s)  # the policy moved things, so restoring has work to do
    env.set_state(s)
    assert np.allclose(env.get_state(), s) and np.array_equal(env.render(), obs)
    colours = {tuple(c) for c in env.render().reshape(-1, 3)}
    assert (70, 110, 200) in colours and (220, 60, 60) in colours


@pytest.mark.parametrize("name", ["tworoom", "pusht"])
def test_advance_is_step_without_the_frame(name):
    """Simulating planners call `advance`: the same motion as `step`, without counting the step or rendering."""
    stepped, advanced = make_env(name), make_env(name)
    stepped.reset(seed=3)
    advanced.reset(seed=3)
    rng = np.random.default_rng(0)
    for a in rng.uniform(-1, 1, size=(12, 2)):
        frame, *_ = stepped.step(a)
        advanced.advance(a)
    np.testing.assert_allclose(advanced.get_state(), stepped.get_state())
    assert (advanced.render() == frame).all() and advanced.steps == 0 and stepped.steps == 12
