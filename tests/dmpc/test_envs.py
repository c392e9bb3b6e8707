import numpy as np
import pytest

from paperclub.dmpc.envs import TASKS, actuator_for_joint, make_env, normalized_score
from paperclub.errors import UserError


def test_unknown_env_and_variant_are_clear_errors():
    with pytest.raises(UserError, match="unknown env 'ant'.*pendulum, halfcheetah, hopper, walker2d"):
        make_env("ant")
    with pytest.raises(UserError, match="unknown variant 'broken-ankle' for env hopper: its variants are none"):
        make_env("hopper", "broken-ankle")
    with pytest.raises(UserError, match="unknown variant 'broken-knee' for env walker2d: its variants are broken-"):
        make_env("walker2d", "broken-knee")


def test_broken_ankle_scales_the_left_foot_gear_only():
    nominal, broken = make_env("walker2d"), make_env("walker2d", "broken-ankle")
    foot = actuator_for_joint(broken, "foot_left_joint")
    assert foot == 5  # gymnasium's walker2d: thigh, leg, foot, then the left ones
    gear0, gear1 = nominal.unwrapped.model.actuator_gear[:, 0], broken.unwrapped.model.actuator_gear[:, 0]
    np.testing.assert_allclose(gear1[foot], 0.3 * gear0[foot])
    np.testing.assert_array_equal(np.delete(gear1, foot), np.delete(gear0, foot))
    # the physics changes: the same action on the left ankle moves it less
    action = np.array([0, 0, 0, 0, 0, 1.0])
    moved = []
    for env in (nominal, broken):
        env.reset(seed=3)
        for _ in range(5):
            obs, *_ = env.step(action)
        moved.append(obs[7])  # foot_left_joint angle
    assert abs(moved[1]) < abs(moved[0])


def test_normalized_scores_use_d4rl_references():
    assert normalized_score("walker2d", 4592.3) == pytest.approx(100.0)
    assert normalized_score("walker2d", 1.629008) == pytest.approx(0.0)
    assert normalized_score("hopper", 1000.0) == pytest.approx(31.3489, abs=1e-4)  # 100 * 1020.27 / 3254.57
    np.testing.assert_allclose(normalized_score("halfcheetah", np.array([-280.178953, 12135.0])), [0.0, 100.0])
    assert TASKS["pendulum"].ref_source.startswith("ours")
    assert normalized_score("pendulum", -152.4) == pytest.approx(100.0)


def test_seeded_envs_repeat():
    a, b = make_env("pendulum", seed=7), make_env("pendulum", seed=7)
    np.testing.assert_array_equal(a.unwrapped.state, b.unwrapped.state)
