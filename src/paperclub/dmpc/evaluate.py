"""Evaluation: E episodes stepped together, so that one planner call serves all of them (the planner batches the
E * N candidates), scored with the task's normalized score and the chosen objective on the real transitions."""

from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np
import torch
from tqdm import tqdm

from paperclub.dmpc.envs import make_env, normalized_score
from paperclub.dmpc.planner import History
from paperclub.dmpc.rewards import NAMED, X_VELOCITY, Reward, task_reward

log = logging.getLogger(__name__)


def stderr(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def run_episodes(env_name: str, planner, episodes: int, seed: int, history: int = 1, variant: str | None = None,
                 objective: Reward | None = None, progress: bool = True) -> dict:
    """Run `episodes` episodes (episode i reset with seed + i) under `planner.plan(states, actions) -> (E, chunk, A)`.
    A planner that keeps state per episode (MBOP's previous plan) has `needs_ids` and gets `ids=` (the episode of
    each row) too, and its `reset()` is called first. Returns the evaluation JSON's figures: besides the task's
    score and the planner's `objective`, every named reward of the env (and the task's) summed over each episode's
    real transitions, under `rewards`, so that runs planned with different objectives compare on the same ones."""
    if hasattr(planner, "reset"):
        planner.reset()
    extra = (lambda need: {"ids": need}) if getattr(planner, "needs_ids", False) else (lambda need: {})
    envs = [make_env(env_name, variant) for _ in range(episodes)]
    low, high = envs[0].action_space.low, envs[0].action_space.high
    obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    hist = [History(history, o, len(low)) for o in obs]
    queues: list[deque] = [deque() for _ in envs]
    returns = np.zeros(episodes)
    measured = {"task": task_reward(env_name), **NAMED.get(env_name, {})}
    if objective is not None:
        measured["_objective"] = objective
    measured_sums = {name: np.zeros(episodes) for name in measured}
    visited: list[list] = [[] for _ in envs]  # (state reached, action) per step, scored when the episode ends
    lengths = np.zeros(episodes, dtype=int)
    active = set(range(episodes))
    actions_done, planning_s = 0, 0.0
    limit = envs[0].spec.max_episode_steps
    bar = tqdm(total=episodes * limit, desc=f"eval {env_name}", unit="step", disable=not progress)
    start = time.perf_counter()
    while active:
        need = sorted(i for i in active if not queues[i])
        if need:
            states, acts = zip(*(hist[i].tensors() for i in need), strict=True)
            t0 = time.perf_counter()
            planned = planner.plan(torch.stack(states), torch.stack(acts), **extra(need)).numpy()
            planning_s += time.perf_counter() - t0
            for i, chunk in zip(need, planned, strict=True):
                queues[i].extend(chunk)
        for i in sorted(active):
            action = np.clip(queues[i].popleft(), low, high)
            next_obs, reward, terminated, truncated, _ = envs[i].step(action)
            visited[i].append((next_obs, action))
            returns[i] += reward
            lengths[i] += 1
            actions_done += 1
            hist[i].push(action, next_obs)
            bar.update(1)
            if terminated or truncated:
                active.discard(i)
                # every step scored as its own one-step prediction (batch = steps, F = 1), in one call per reward
                s = torch.as_tensor(np.stack([v[0] for v in visited[i]]), dtype=torch.float32)[:, None]
                a = torch.as_tensor(np.stack([v[1] for v in visited[i]]), dtype=torch.float32)[:, None]
                for name, fn in measured.items():
                    measured_sums[name][i] = float(fn(s, a).double().sum())
                bar.update(limit - lengths[i])
    bar.close()
    wall = time.perf_counter() - start
    scores = normalized_score(env_name, returns)
    result = {"env": env_name, "variant": variant, "episodes": episodes, "seed": seed,
              "normalized_score": {"mean": float(scores.mean()), "stderr": stderr(scores)},
              "mean_return": float(returns.mean()), "return_stderr": stderr(returns),
              "returns": returns.tolist(), "episode_lengths": lengths.tolist(),
              "actions_per_s": actions_done / wall, "planning_s": planning_s, "wall_s": wall,
              "rewards": {name: {"mean": float(v.mean()), "stderr": stderr(v), "per_episode": v.tolist()}
                          for name, v in measured_sums.items() if name != "_objective"}}
    if env_name in X_VELOCITY:  # locomotion: observation 0 is the torso's (root's) height
        heights = np.array([np.mean([v[0][0] for v in steps]) for steps in visited])
        result["torso_height"] = {"mean": float(heights.mean()), "stderr": stderr(heights),
                                  "per_episode": heights.tolist()}
    if objective is not None:
        sums = measured_sums["_objective"]
        result["objective"] = {"mean": float(sums.mean()), "stderr": stderr(sums), "per_episode": sums.tolist()}
    return result
