"""Small datasets for the tests."""

from __future__ import annotations

import numpy as np

from paperclub.dmpc.dataset import Dataset


def toy_dataset(episode_lengths=(5, 7), obs_dim=3, act_dim=2, env="pendulum", seed=0) -> Dataset:
    """Episodes whose observations count rows (obs[i] = i in every dim), with random actions and rewards 1."""
    rng = np.random.default_rng(seed)
    n = sum(episode_lengths)
    obs = np.repeat(np.arange(n, dtype=np.float32)[:, None], obs_dim, axis=1)
    starts = np.zeros(n, dtype=bool)
    starts[np.cumsum((0, *episode_lengths[:-1]))] = True
    timeouts = np.roll(starts, -1)
    return Dataset(observations=obs, actions=rng.standard_normal((n, act_dim)).astype(np.float32),
                   rewards=np.ones(n, dtype=np.float32), next_observations=obs + 0.5,
                   terminals=np.zeros(n, dtype=bool), timeouts=timeouts, episode_starts=starts, env=env, kind="toy")

