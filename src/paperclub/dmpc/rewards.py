"""Objectives for the planner: `reward(states, actions) -> (batch, F)`, computed from predicted states alone.

`states` are the predicted s_{t+1..t+F} (batch, F, obs_dim) and `actions` the a_{t..t+F-1} (batch, F, act_dim),
both in the environment's own units. The task rewards rebuild gymnasium's reward from the state that follows each
action: locomotion = forward velocity (the root's x velocity in the observation, the same quantity the env
measures as a finite difference) + the healthy bonus - the control cost; hopper and walker2d stop earning (alive
mask) after the first predicted unhealthy state, as the real episode would terminate there. Pendulum's cost is
evaluated on the state reached rather than the one left: the same objective, one step later.

Write your own as `module:function` with the same signature, e.g. `mypkg.rewards:run_left`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from paperclub.errors import UserError

Reward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# observation index of the root's forward (x) velocity, and of the torso height / pitch where there are such
X_VELOCITY = {"halfcheetah": 8, "hopper": 5, "walker2d": 8}
Z_VELOCITY = {"halfcheetah": 9, "hopper": 6, "walker2d": 9}  # the root's vertical velocity
CTRL_COST = {"halfcheetah": 0.1, "hopper": 1e-3, "walker2d": 1e-3}


def healthy(env: str, states: torch.Tensor) -> torch.Tensor:
    """(batch, F) bool: gymnasium's is_healthy on each predicted state (always true where the task never ends)."""
    if env == "walker2d":
        z, angle = states[..., 0], states[..., 1]
        return (z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0)
    if env == "hopper":
        z, angle = states[..., 0], states[..., 1]
        rest_ok = ((states[..., 1:] > -100.0) & (states[..., 1:] < 100.0)).all(-1)
        return (z > 0.7) & (angle > -0.2) & (angle < 0.2) & rest_ok
    return torch.ones(states.shape[:-1], dtype=torch.bool, device=states.device)


def alive(env: str, states: torch.Tensor) -> torch.Tensor:
    """(batch, F) float: 1 up to and including the first unhealthy predicted state (its reward still counts, as the
    env pays the step that terminates), 0 after it."""
    ok = healthy(env, states).float()
    before = torch.cat([torch.ones_like(ok[:, :1]), ok[:, :-1]], dim=1)
    return torch.cumprod(before, dim=1)


def task_reward(env: str) -> Reward:
    """The task's own reward, rebuilt from predicted states (see the module docstring)."""
    if env == "pendulum":
        def pendulum(states, actions):
            theta = torch.atan2(states[..., 1], states[..., 0])
            return -(theta**2 + 0.1 * states[..., 2] ** 2 + 0.001 * actions[..., 0] ** 2)
        return pendulum

    def locomotion(states, actions):
        forward = states[..., X_VELOCITY[env]]
        ctrl = CTRL_COST[env] * (actions**2).sum(-1)
        bonus = healthy(env, states).float() if env in ("hopper", "walker2d") else 0.0
        return alive(env, states) * (forward + bonus) - ctrl

    return locomotion


def walker_jump(states, actions):
    """Walker2d: jump, while alive: 1 per step, plus 10 per metre of torso height above the 0.8 below which the
    walker has fallen, plus 10 per m/s of upward torso velocity. A plan spans F steps of 8 ms (64 ms at F = 8),
    too short to change the height much, so the upward velocity, which it can change, carries the intent; the
    height term ranks candidates wherever the walker is (70% of a medium walking policy's states are below its
    standing 1.25); never negative while alive, so staying up always pays."""
    z, up = states[..., 0], states[..., Z_VELOCITY["walker2d"]]
    return alive("walker2d", states) * (1.0 + 10.0 * (z - 0.8).clamp(min=0.0) + 10.0 * up.clamp(min=0.0))


def walker_backward(states, actions):
    """Walker2d: walk backwards (minus the forward velocity), with the healthy bonus and control cost."""
    a = alive("walker2d", states)
    return a * (1.0 - states[..., X_VELOCITY["walker2d"]]) - 1e-3 * (actions**2).sum(-1)


def walker_balance(states, actions):
    """Walker2d: stay upright and in place: the healthy bonus minus the torso pitch and any forward motion."""
    a = alive("walker2d", states)
    return a * (1.0 - states[..., 1].abs() - 0.5 * states[..., X_VELOCITY["walker2d"]].abs())


NAMED = {"walker2d": {"jump": walker_jump, "backward": walker_backward, "balance": walker_balance}}


def get_reward(env: str, name: str | None) -> Reward:
    """`None`/"task": the task's reward; a named reward of this env; or `module:function`."""
    if name in (None, "task"):
        return task_reward(env)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"--reward {name}: cannot import it ({e}); give module:function on PYTHONPATH") from e
        if not callable(fn):
            raise UserError(f"--reward {name}: {attr} is not a function of (states, actions)")
        return fn
    named = NAMED.get(env, {})
    if name not in named:
        known = ", ".join(["task", *named]) if named else "task"
        raise UserError(f"unknown reward {name!r} for env {env}: choose {known}, or module:function")
    return named[name]
