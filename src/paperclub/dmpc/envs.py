"""The tasks: gymnasium environments by short name, the named variants, and D4RL-style score normalization."""

from __future__ import annotations

from dataclasses import dataclass, field

from paperclub.errors import UserError

BROKEN_ANKLE_GEAR = 0.3  # the left foot's actuator keeps 30% of its gear


@dataclass(frozen=True)
class Task:
    name: str
    gym_id: str
    ref_min: float  # the return normalized to 0 (D4RL: a random policy)
    ref_max: float  # the return normalized to 100 (D4RL: an expert policy)
    ref_source: str
    variants: tuple[str, ...] = field(default=())


TASKS = {
    "pendulum": Task("pendulum", "Pendulum-v1", -1255.5, -152.4,
                     "ours: mean over seeds 0-199 of uniform random actions (-1255.5 +- 20.9) and of the scripted "
                     "swing-up controller in scripted.py (-152.4 +- 6.4)"),
    "halfcheetah": Task("halfcheetah", "HalfCheetah-v5", -280.178953, 12135.0, "D4RL reference returns"),
    "hopper": Task("hopper", "Hopper-v5", -20.272305, 3234.3, "D4RL reference returns"),
    "walker2d": Task("walker2d", "Walker2d-v5", 1.629008, 4592.3, "D4RL reference returns",
                     variants=("broken-ankle",)),
}


def task(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown env {name!r}: choose one of {', '.join(TASKS)}")
    return TASKS[name]


def check_variant(name: str, variant: str | None) -> None:
    t = task(name)
    if variant is not None and variant not in t.variants:
        known = ", ".join(t.variants) if t.variants else "none"
        raise UserError(f"unknown variant {variant!r} for env {name}: its variants are {known}")


def make_env(name: str, variant: str | None = None, seed: int | None = None):
    """A gymnasium environment for task `name` (pendulum, halfcheetah, hopper, walker2d), optionally a named
    variant (walker2d: broken-ankle). With `seed`, the first reset and the action space are seeded."""
    import gymnasium as gym

    check_variant(name, variant)
    env = gym.make(task(name).gym_id)
    if variant == "broken-ankle":
        break_ankle(env)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def actuator_for_joint(env, joint: str) -> int:
    """The index of the actuator that drives `joint` (gymnasium's walker2d actuators carry no names of their own)."""
    import mujoco

    model = env.unwrapped.model
    joint_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, joint)
    for i in range(model.nu):
        if model.actuator_trntype[i] == mujoco.mjtTrn.mjTRN_JOINT and model.actuator_trnid[i, 0] == joint_id:
            return i
    raise UserError(f"no actuator drives joint {joint!r} in {env.spec.id}")


def break_ankle(env, scale: float = BROKEN_ANKLE_GEAR) -> None:
    """The broken left ankle: the actuator on walker2d's `foot_left_joint` gets `scale` times its gear."""
    i = actuator_for_joint(env, "foot_left_joint")
    env.unwrapped.model.actuator_gear[i, 0] *= scale


def normalized_score(name: str, ret):
    """100 * (return - reference min) / (reference max - reference min): D4RL's normalization (for pendulum our
    own reference returns, see TASKS). Works on floats and numpy arrays."""
    t = task(name)
    return 100.0 * (ret - t.ref_min) / (t.ref_max - t.ref_min)
