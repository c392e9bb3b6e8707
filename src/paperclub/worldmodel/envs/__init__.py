"""The two environments and their scripted data-collection policies, by name."""

from __future__ import annotations

import numpy as np

from paperclub.errors import UserError
from paperclub.worldmodel.envs.pusht import PushTEnv, PushTRandomPolicy
from paperclub.worldmodel.envs.tworoom import TwoRoomEnv, TwoRoomExpert

ENVS = {"tworoom": (TwoRoomEnv, TwoRoomExpert), "pusht": (PushTEnv, PushTRandomPolicy)}


def check_env_name(name: str) -> str:
    if name not in ENVS:
        raise UserError(f"unknown environment {name!r}: use one of {', '.join(ENVS)}")
    return name


def make_env(name: str, image_size: int = 64, antialias: bool = False):
    """The environment `name` rendering image_size x image_size frames, antialiased (Push-T only) or not."""
    if antialias and check_env_name(name) != "pusht":
        raise UserError(f"antialiased frames are a Push-T option; {name} renders hard edges only")
    extra = {"antialias": True} if antialias else {}
    return ENVS[check_env_name(name)][0](image_size=image_size, **extra)


def make_policy(name: str, env, rng: np.random.Generator):
    """The scripted data-collection policy: noisy expert (tworoom) or weak block-biased random (pusht)."""
    return ENVS[check_env_name(name)][1](env, rng)
