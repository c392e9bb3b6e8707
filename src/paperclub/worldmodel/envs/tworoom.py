"""TwoRoom: a point agent in a square arena split by a wall with one door. Pure numpy.

World [0, 1]^2; the wall is the band |x - 0.5| <= WALL_HALF, open where |y - 0.5| <= DOOR_HALF. Action: a
velocity in [-1, 1]^2, moved STEP per env step; the wall blocks motion. Observation: a 64x64 RGB frame.
Proprio: the agent position. Success: the agent within `success_tol` of the goal position.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from paperclub.worldmodel.envs.render import fill_disc, pixel_centres

WALL_HALF = 0.03
DOOR_HALF = 0.12
RADIUS = 0.045
STEP = 0.05
AGENT_COLOR = (220, 50, 50)
ALT_AGENT_COLOR = (40, 170, 60)  # used by the colour-change surprise test
WALL_COLOR = (60, 60, 60)
FLOOR_COLORS = ((235, 230, 210), (210, 225, 240))  # left room, right room


class TwoRoomEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, image_size: int = 64, max_steps: int = 200, success_tol: float = 0.08):
        self.image_size = image_size
        self.max_steps = max_steps
        self.success_tol = success_tol
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
        self.pos = np.array([0.25, 0.5])
        self.agent_color = AGENT_COLOR
        self.steps = 0
        self._xs, self._ys = pixel_centres(image_size, 1.0)
        self._background = self._draw_background()

    # -- state -------------------------------------------------------------------------------------------
    def get_state(self) -> np.ndarray:
        return self.pos.copy()

    def set_state(self, state: np.ndarray) -> None:
        self.pos = np.asarray(state, dtype=np.float64).copy()

    def proprio(self) -> np.ndarray:
        return self.pos.astype(np.float32)

    def sample_free_position(self, rng: np.random.Generator, room: int | None = None) -> np.ndarray:
        room = int(rng.integers(2)) if room is None else room
        lo, hi = (RADIUS, 0.5 - WALL_HALF - RADIUS) if room == 0 else (0.5 + WALL_HALF + RADIUS, 1 - RADIUS)
        return np.array([rng.uniform(lo, hi), rng.uniform(RADIUS, 1 - RADIUS)])

    # -- gym API -----------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = self.sample_free_position(self.np_random)
        self.agent_color = AGENT_COLOR
        self.steps = 0
        return self.render(), {"proprio": self.proprio(), "state": self.get_state()}

    def step(self, action):
        self.advance(action)
        self.steps += 1
        truncated = self.steps >= self.max_steps
        return self.render(), 0.0, False, truncated, {"proprio": self.proprio(), "state": self.get_state()}

    def advance(self, action) -> None:
        """The motion of one step, without rendering or counting it (planners that simulate call this)."""
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.pos = self._move(self.pos, self.pos + STEP * a)

    @staticmethod
    def is_free(p: np.ndarray) -> bool:
        """True where the agent's disc does not overlap the wall (it is clear of it, or inside the door)."""
        return abs(p[0] - 0.5) >= WALL_HALF + RADIUS or abs(p[1] - 0.5) <= DOOR_HALF - RADIUS

    def _move(self, old: np.ndarray, new: np.ndarray) -> np.ndarray:
        """Move if the end point is free (a step is shorter than the wall, so nothing tunnels); else slide
        along one axis; else stay."""
        new = np.clip(new, RADIUS, 1 - RADIUS)
        for candidate in (new, np.array([new[0], old[1]]), np.array([old[0], new[1]])):
            if self.is_free(candidate):
                return candidate
        return old.copy()

    def render(self) -> np.ndarray:
        img = self._background.copy()
        fill_disc(img, self._xs, self._ys, self.pos[0], self.pos[1], RADIUS, self.agent_color)
        return img

    def _draw_background(self) -> np.ndarray:
        img = np.empty((self.image_size, self.image_size, 3), dtype=np.uint8)
        img[self._xs < 0.5] = FLOOR_COLORS[0]
        img[self._xs >= 0.5] = FLOOR_COLORS[1]
        wall = (np.abs(self._xs - 0.5) <= WALL_HALF) & (np.abs(self._ys - 0.5) > DOOR_HALF)
        img[wall] = WALL_COLOR
        return img

    # -- task --------------------------------------------------------------------------------------------
    def is_success(self, goal_state: np.ndarray) -> bool:
        return bool(np.linalg.norm(self.pos - goal_state[:2]) <= self.success_tol)

    def goal_distance(self, goal_state: np.ndarray) -> float:
        return float(np.linalg.norm(self.pos - goal_state[:2]))

    # -- perturbations for the surprise test -------------------------------------------------------------
    def teleport(self, rng: np.random.Generator) -> None:
        """Move the agent to a random free spot at least 0.3 away (a physically impossible jump)."""
        for _ in range(100):
            p = self.sample_free_position(rng)
            if np.linalg.norm(p - self.pos) >= 0.3:
                break
        self.pos = p

    def change_color(self) -> None:
        self.agent_color = ALT_AGENT_COLOR


class TwoRoomExpert:
    """Noisy scripted expert: to the door, then to the target; a new target when it arrives."""

    def __init__(self, env: TwoRoomEnv, rng: np.random.Generator, noise: float = 0.3):
        self.env, self.rng, self.noise = env, rng, noise
        self.target = env.sample_free_position(rng)

    def __call__(self) -> np.ndarray:
        pos = self.env.pos
        if np.linalg.norm(self.target - pos) < 0.05:
            self.target = self.env.sample_free_position(self.rng)
        same_room = (pos[0] < 0.5) == (self.target[0] < 0.5)
        if same_room and abs(pos[0] - 0.5) > WALL_HALF + RADIUS:
            waypoint = self.target
        elif abs(pos[1] - 0.5) > DOOR_HALF - RADIUS - 0.02 and abs(pos[0] - 0.5) > WALL_HALF + RADIUS:
            side = -1.0 if pos[0] < 0.5 else 1.0  # line up with the door first
            waypoint = np.array([0.5 + side * (WALL_HALF + RADIUS + 0.05), 0.5])
        else:
            waypoint = np.array([0.5 + (0.15 if self.target[0] >= 0.5 else -0.15), 0.5])
            if same_room:
                waypoint = self.target
        d = waypoint - pos
        action = d / max(np.linalg.norm(d), 1e-8) * min(1.0, np.linalg.norm(d) / STEP)
        action = action + self.noise * self.rng.standard_normal(2)
        return np.clip(action, -1, 1).astype(np.float32)
