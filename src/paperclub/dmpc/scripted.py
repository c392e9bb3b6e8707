"""A scripted Pendulum-v1 controller: our pendulum "expert" reference and a cheap source of test data."""

from __future__ import annotations

import numpy as np


def pendulum_swing_up(obs: np.ndarray) -> np.ndarray:
    """Pump energy towards the upright energy, then hold with PD. Pendulum-v1 obeys thdot' = 15 sin th + 3 u, so
    E = thdot^2 / 2 + 15 cos th is 15 upright at rest and dE/dt = 3 u thdot: push with the sign of thdot while E is
    short of 15. About -140 per episode (see envs.TASKS)."""
    c, s, w = obs
    if c > 0.85:
        return np.array([np.clip(-10.0 * np.arctan2(s, c) - 2.0 * w, -2.0, 2.0)])
    energy = 0.5 * w**2 + 15.0 * c
    return np.array([2.0 * np.sign(w * (15.0 - energy) + 1e-6)])
