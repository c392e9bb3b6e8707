"""Push-T: a round pusher (kinematic) pushes a T-shaped block (dynamic) on a table. pymunk physics.

World [0, 512]^2 with walls. Action in [-1, 1]^2: the pusher's velocity (x MAX_SPEED) for one env step of
DT seconds (SUBSTEPS physics steps). Ground friction is modelled with strong velocity damping, so the block
only moves while pushed. Observation: a 64x64 RGB frame. Proprio: pusher position and velocity (scaled to
[0, 1] and [-1, 1]). State: pusher x, y, block x, y, angle. Success: block position within `pos_tol` and
angle within `angle_tol` of the goal block pose.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pymunk
from gymnasium import spaces

from paperclub.worldmodel.envs.render import blend, disc_coverage, fill_disc, fill_rect, pixel_centres, rect_coverage

WORLD = 512.0
PUSHER_RADIUS = 15.0
MAX_SPEED = 200.0  # world units per second
DT = 0.1
SUBSTEPS = 10
BAR = (120.0, 30.0)  # T top bar: width, height
STEM = (30.0, 90.0)  # T stem: width, height
# the two rectangles of the T in the block's own frame: (centre x, centre y, half w, half h)
T_PARTS = ((0.0, STEM[1] / 2 + BAR[1] / 2, BAR[0] / 2, BAR[1] / 2), (0.0, 0.0, STEM[0] / 2, STEM[1] / 2))
BG_COLOR = (238, 238, 230)
BLOCK_COLOR = (70, 110, 200)
ALT_BLOCK_COLOR = (60, 180, 90)  # used by the colour-change surprise test
PUSHER_COLOR = (220, 60, 60)


def wrap_angle(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)


class PushTEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        image_size: int = 64,
        max_steps: int = 300,
        pos_tol: float = 20.0,
        angle_tol: float = np.pi / 9,
        antialias: bool = False,
    ):
        self.image_size = image_size
        self.antialias = antialias  # frames with edge coverage: sub-pixel moves of the block show (render.py)
        self.max_steps = max_steps
        self.pos_tol = pos_tol
        self.angle_tol = angle_tol
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
        self._xs, self._ys = pixel_centres(image_size, WORLD)
        self.block_color = BLOCK_COLOR
        self.steps = 0
        self._build_space()

    def _build_space(self) -> None:
        self.space = pymunk.Space()
        self.space.gravity = (0.0, 0.0)
        self.space.damping = 1e-4  # fraction of velocity kept after one second: acts as ground friction
        walls = [((5, 5), (5, 507)), ((5, 507), (507, 507)), ((507, 507), (507, 5)), ((507, 5), (5, 5))]
        for a, b in walls:
            seg = pymunk.Segment(self.space.static_body, a, b, 4.0)
            seg.friction = 0.5
            self.space.add(seg)
        self.pusher = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        pusher_shape = pymunk.Circle(self.pusher, PUSHER_RADIUS)
        pusher_shape.friction = 1.0
        self.space.add(self.pusher, pusher_shape)
        shapes_verts = []
        for cx, cy, hw, hh in T_PARTS:
            shapes_verts.append(
                [(cx - hw, cy - hh), (cx + hw, cy - hh), (cx + hw, cy + hh), (cx - hw, cy + hh)]
            )
        mass = 1.0
        moment = sum(pymunk.moment_for_poly(mass / 2, v) for v in shapes_verts)
        self.block = pymunk.Body(mass, moment)
        self.space.add(self.block)
        for v in shapes_verts:
            shape = pymunk.Poly(self.block, v)
            shape.friction = 1.0
            self.space.add(shape)

    # -- state -------------------------------------------------------------------------------------------
    def get_state(self) -> np.ndarray:
        return np.array([*self.pusher.position, *self.block.position, wrap_angle(self.block.angle)])

    def set_state(self, state: np.ndarray) -> None:
        self.pusher.position = (float(state[0]), float(state[1]))
        self.pusher.velocity = (0.0, 0.0)
        self.block.position = (float(state[2]), float(state[3]))
        self.block.angle = float(state[4])
        self.block.velocity = (0.0, 0.0)
        self.block.angular_velocity = 0.0
        self.space.reindex_shapes_for_body(self.block)
        self.space.reindex_shapes_for_body(self.pusher)

    def proprio(self) -> np.ndarray:
        p, v = self.pusher.position, self.pusher.velocity
        return np.array([p[0] / WORLD, p[1] / WORLD, v[0] / MAX_SPEED, v[1] / MAX_SPEED], dtype=np.float32)

    def _random_block_pose(self, rng: np.random.Generator) -> tuple[float, float, float]:
        return float(rng.uniform(150, 362)), float(rng.uniform(150, 362)), float(rng.uniform(-np.pi, np.pi))

    # -- gym API -----------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        bx, by, ba = self._random_block_pose(rng)
        while True:  # pusher somewhere not overlapping the block
            px, py = rng.uniform(40, 472, size=2)
            if np.hypot(px - bx, py - by) > 110:
                break
        self.set_state(np.array([px, py, bx, by, ba]))
        self.block_color = BLOCK_COLOR
        self.steps = 0
        return self.render(), {"proprio": self.proprio(), "state": self.get_state()}

    def step(self, action):
        self.advance(action)
        self.steps += 1
        truncated = self.steps >= self.max_steps
        return self.render(), 0.0, False, truncated, {"proprio": self.proprio(), "state": self.get_state()}

    def advance(self, action) -> None:
        """The physics of one step, without rendering or counting it (planners that simulate call this)."""
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.pusher.velocity = (float(a[0] * MAX_SPEED), float(a[1] * MAX_SPEED))
        for _ in range(SUBSTEPS):
            self.space.step(DT / SUBSTEPS)
            # keep the kinematic pusher inside the table (it would otherwise go through the walls)
            x, y = self.pusher.position
            cx = min(max(x, 10 + PUSHER_RADIUS), WORLD - 10 - PUSHER_RADIUS)
            cy = min(max(y, 10 + PUSHER_RADIUS), WORLD - 10 - PUSHER_RADIUS)
            if (cx, cy) != (x, y):
                self.pusher.position = (cx, cy)

    def render(self) -> np.ndarray:
        if self.antialias:
            return self._render_antialiased()
        img = np.empty((self.image_size, self.image_size, 3), dtype=np.uint8)
        img[:] = BG_COLOR
        for cx, cy, hw, hh, ang in self._block_rects():
            fill_rect(img, self._xs, self._ys, cx, cy, hw, hh, ang, self.block_color)
        px, py = self.pusher.position
        fill_disc(img, self._xs, self._ys, px, py, PUSHER_RADIUS, PUSHER_COLOR)
        return img

    def _block_rects(self) -> list[tuple[float, float, float, float, float]]:
        """The T's two rectangles in world coordinates: (centre x, centre y, half w, half h, angle)."""
        bx, by = self.block.position
        ang = self.block.angle
        c, s = np.cos(ang), np.sin(ang)
        return [(bx + c * cx - s * cy, by + s * cx + c * cy, hw, hh, ang) for cx, cy, hw, hh in T_PARTS]

    def _render_antialiased(self) -> np.ndarray:
        pixel = WORLD / self.image_size
        img = np.empty((self.image_size, self.image_size, 3), dtype=np.float32)
        img[:] = BG_COLOR
        parts = [rect_coverage(self._xs, self._ys, *rect, pixel) for rect in self._block_rects()]
        blend(img, np.maximum(*parts), self.block_color)  # the two bars overlap: one shape, not two layers
        px, py = self.pusher.position
        blend(img, disc_coverage(self._xs, self._ys, px, py, PUSHER_RADIUS, pixel), PUSHER_COLOR)
        return np.rint(img).astype(np.uint8)

    # -- task --------------------------------------------------------------------------------------------
    def is_success(self, goal_state: np.ndarray) -> bool:
        s = self.get_state()
        return bool(
            np.hypot(*(s[2:4] - goal_state[2:4])) <= self.pos_tol
            and abs(wrap_angle(s[4] - goal_state[4])) <= self.angle_tol
        )

    def goal_distance(self, goal_state: np.ndarray) -> float:
        """Block position error in world units plus angle error in degrees (a rough progress score)."""
        s = self.get_state()
        return float(
            np.hypot(*(s[2:4] - goal_state[2:4])) + np.degrees(abs(wrap_angle(s[4] - goal_state[4])))
        )

    # -- perturbations for the surprise test -------------------------------------------------------------
    def teleport(self, rng: np.random.Generator) -> None:
        """Put the block at a random new pose (a physically impossible jump)."""
        s = self.get_state()
        bx, by, ba = self._random_block_pose(rng)
        s[2:] = bx, by, ba
        self.set_state(s)

    def change_color(self) -> None:
        self.block_color = ALT_BLOCK_COLOR


class PushTRandomPolicy:
    """Weak random policy biased toward the block: head to a random point near the block (changed every few
    steps) with heavy noise, sometimes act uniformly at random."""

    def __init__(self, env: PushTEnv, rng: np.random.Generator, noise: float = 0.5, p_random: float = 0.15):
        self.env, self.rng, self.noise, self.p_random = env, rng, noise, p_random
        self.offset = np.zeros(2)
        self.t = 0

    def __call__(self) -> np.ndarray:
        if self.t % 8 == 0:
            self.offset = self.rng.normal(0.0, 50.0, size=2)
        self.t += 1
        if self.rng.random() < self.p_random:
            return self.rng.uniform(-1, 1, size=2).astype(np.float32)
        d = np.asarray(self.env.block.position) + self.offset - np.asarray(self.env.pusher.position)
        action = d / max(np.linalg.norm(d), 1e-8) * min(1.0, np.linalg.norm(d) / (MAX_SPEED * DT))
        return np.clip(action + self.noise * self.rng.standard_normal(2), -1, 1).astype(np.float32)
