"""Datasets of scripted episodes, stored as one HDF5 file, and the window sampler used for training.

Schema (HDF5, `schema` attribute = SCHEMA):
    frames   uint8   (S, H, W, 3)  all observations of all episodes, concatenated (gzip-compressed)
    actions  float32 (S, A)        action taken after each observation (zeros after an episode's last one)
    proprio  float32 (S, P)        agent proprioception at each observation
    state    float64 (S, Z)        full simulator state at each observation (for goals and analysis)
    episode_starts  int64 (E,)     index of each episode's first observation; episode i spans
    episode_lengths int64 (E,)     [start_i, start_i + length_i)
attributes: env, image_size, antialias (absent: False), seed, num_episodes, steps_per_episode, policy, created_by
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from paperclub.atomic import atomic_path
from paperclub.errors import UserError
from paperclub.worldmodel.envs import make_env, make_policy

log = logging.getLogger(__name__)
SCHEMA = "paperclub.lewm.dataset/1"


@dataclass
class CollectConfig:
    env: str = "tworoom"
    episodes: int = 100
    steps: int = 100  # env steps per episode (observations = steps + 1)
    seed: int = 0
    image_size: int = 64
    explore: float = 0.0  # probability that a step's action is uniform random instead of the policy's
    # a random action, once drawn, is held for 1..explore_hold steps (uniform): long holds push the agent into
    # walls and the block along a line, the contacts CEM's candidate plans reach and the policy never does
    explore_hold: int = 1
    antialias: bool = False  # Push-T: frames with edge coverage (envs/render.py)

    def __post_init__(self):
        if self.explore_hold < 1:
            raise UserError(f"--explore-hold must be at least 1, got {self.explore_hold}")
        if self.episodes < 1 or self.steps < 1:
            raise UserError("--episodes and --steps must be at least 1")
        if not 0.0 <= self.explore <= 1.0:
            raise UserError(f"--explore must be in [0, 1], got {self.explore}")
        if self.image_size < 16 or self.image_size % 8:
            raise UserError("--image-size must be a multiple of 8, at least 16")
        if self.antialias and self.env != "pusht":
            raise UserError(f"--antialias is a Push-T option; {self.env} renders hard edges only")


@dataclass
class Episodes:
    env: str
    frames: np.ndarray
    actions: np.ndarray
    proprio: np.ndarray
    state: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    antialias: bool = False  # how the frames were rendered (older datasets: hard edges)

    @property
    def num_episodes(self) -> int:
        return len(self.starts)

    def episode(self, i: int) -> dict[str, np.ndarray]:
        s = slice(int(self.starts[i]), int(self.starts[i] + self.lengths[i]))
        return {
            "frames": self.frames[s],
            "actions": self.actions[s],
            "proprio": self.proprio[s],
            "state": self.state[s],
        }


def run_episode(
    env_name: str, env, steps: int, seed: int, explore: float = 0.0, explore_hold: int = 1
) -> dict[str, np.ndarray]:
    """One episode of the scripted policy; returns stacked frames/actions/proprio/state (steps + 1 rows).
    `explore`: each step's action is replaced, with this probability, by a uniform random one (own random stream,
    so explore = 0 reproduces the plain policy's episodes), which is then kept for a uniform 1..`explore_hold`
    steps (the policy still runs underneath, so it resumes from wherever the agent ended up)."""
    rng = np.random.default_rng(seed)
    explore_rng = np.random.default_rng([seed, 1])
    obs, info = env.reset(seed=seed)
    policy = make_policy(env_name, env, rng)
    frames, actions, proprio, state = [obs], [], [info["proprio"]], [info["state"]]
    held, hold_left = None, 0
    for _ in range(steps):
        a = policy()
        if hold_left > 0:
            a, hold_left = held, hold_left - 1
        elif explore > 0 and explore_rng.random() < explore:
            a = held = explore_rng.uniform(-1.0, 1.0, size=a.shape).astype(a.dtype)
            hold_left = int(explore_rng.integers(1, explore_hold + 1)) - 1 if explore_hold > 1 else 0
        obs, _, _, _, info = env.step(a)
        actions.append(a)
        frames.append(obs)
        proprio.append(info["proprio"])
        state.append(info["state"])
    actions.append(np.zeros_like(actions[0]))
    return {
        "frames": np.stack(frames),
        "actions": np.stack(actions).astype(np.float32),
        "proprio": np.stack(proprio).astype(np.float32),
        "state": np.stack(state).astype(np.float64),
    }


def collect(cfg: CollectConfig, out: str | os.PathLike, progress: bool = True) -> Path:
    """Run `cfg.episodes` scripted episodes and write them atomically to the HDF5 file `out`."""
    env = make_env(cfg.env, cfg.image_size, cfg.antialias)
    eps = [
        run_episode(cfg.env, env, cfg.steps, cfg.seed * 100_003 + i, cfg.explore, cfg.explore_hold)
        for i in tqdm(range(cfg.episodes), desc=f"collect {cfg.env}", disable=not progress)
    ]
    lengths = np.array([len(e["frames"]) for e in eps], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    out = Path(out)
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(
                schema=SCHEMA,
                env=cfg.env,
                image_size=cfg.image_size,
                seed=cfg.seed,
                num_episodes=cfg.episodes,
                steps_per_episode=cfg.steps,
                policy=type(make_policy(cfg.env, env, np.random.default_rng(0))).__name__,
                explore=cfg.explore,
                explore_hold=cfg.explore_hold,
                antialias=cfg.antialias,
                created_by="paperclub lewm collect",
            )
            frames = np.concatenate([e["frames"] for e in eps])
            f.create_dataset(
                "frames",
                data=frames,
                compression="gzip",
                compression_opts=4,
                chunks=(min(256, len(frames)), *frames.shape[1:]),
            )
            for key in ("actions", "proprio", "state"):
                f.create_dataset(key, data=np.concatenate([e[key] for e in eps]))
            f.create_dataset("episode_starts", data=starts)
            f.create_dataset("episode_lengths", data=lengths)
    log.info("wrote %d episodes (%d frames) to %s", cfg.episodes, int(lengths.sum()), out)
    return out


def load(path: str | os.PathLike) -> Episodes:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"dataset {path} not found: make one with `paperclub lewm collect --out {path}`")
    with h5py.File(path, "r") as f:
        if f.attrs.get("schema") != SCHEMA:
            raise UserError(f"{path} is not a LeWM dataset (schema {f.attrs.get('schema')!r}, want {SCHEMA})")
        return Episodes(
            env=str(f.attrs["env"]),
            frames=f["frames"][:],
            actions=f["actions"][:],
            proprio=f["proprio"][:],
            state=f["state"][:],
            starts=f["episode_starts"][:],
            lengths=f["episode_lengths"][:],
            antialias=bool(f.attrs.get("antialias", False)),
        )


class WindowSampler:
    """Random training windows: `history + 1` frames `frameskip` steps apart, and after each frame the block
    of `frameskip` actions that leads to the next one (flattened to frameskip * action_dim)."""

    def __init__(self, data: Episodes, history: int, frameskip: int, episodes: np.ndarray | None = None):
        self.data, self.history, self.frameskip = data, history, frameskip
        span = history * frameskip  # from the first frame of a window to its last
        eps = np.arange(data.num_episodes) if episodes is None else np.asarray(episodes)
        valid = [
            np.arange(data.starts[i], data.starts[i] + data.lengths[i] - span)
            for i in eps
            if data.lengths[i] > span
        ]
        if not valid:
            raise UserError(
                f"episodes are too short for windows of {history + 1} frames, {frameskip} apart: "
                "collect longer episodes (--steps)"
            )
        self.window_starts = np.concatenate(valid)

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """frames (B, history+1, H, W, 3) uint8 and action blocks (B, history+1, frameskip*A) float32."""
        starts = rng.choice(self.window_starts, size=batch_size)
        return self.window(starts)

    def window(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k, n = self.frameskip, self.history + 1
        frame_idx = starts[:, None] + k * np.arange(n)[None, :]
        act_idx = frame_idx[:, :, None] + np.arange(k)[None, None, :]
        act_idx = np.minimum(act_idx, len(self.data.actions) - 1)
        actions = self.data.actions[act_idx].reshape(len(starts), n, -1)
        return self.data.frames[frame_idx], actions
