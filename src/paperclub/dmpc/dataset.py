"""D4RL-shaped offline datasets in HDF5: one row per transition, episodes back to back.

Datasets: observations (N, S), actions (N, A), rewards (N,), next_observations (N, S), terminals (N,) (the env
ended the episode: the robot fell), timeouts (N,) (the time limit cut it), episode_starts (N,) (row opens an
episode). Attributes: schema (SCHEMA), env, variant ("" for none), kind, seed, and the returns summary.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paperclub.atomic import atomic_path
from paperclub.errors import UserError

log = logging.getLogger(__name__)

SCHEMA = "paperclub.dmpc.dataset/1"
KEYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts", "episode_starts")


@dataclass
class Dataset:
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_starts: np.ndarray
    env: str
    variant: str | None = None
    kind: str = ""
    seed: int = 0

    def __len__(self) -> int:
        return len(self.rewards)

    def episode_bounds(self) -> list[tuple[int, int]]:
        """[start, end) rows of each episode."""
        starts = np.flatnonzero(self.episode_starts).tolist()
        return list(zip(starts, starts[1:] + [len(self)], strict=True))

    def episode_returns(self) -> np.ndarray:
        return np.array([self.rewards[a:b].sum() for a, b in self.episode_bounds()])


def returns_summary(data: Dataset) -> dict:
    rets = data.episode_returns()
    return {"episodes": int(len(rets)), "transitions": int(len(data)), "return_mean": float(rets.mean()),
            "return_std": float(rets.std()), "return_min": float(rets.min()), "return_max": float(rets.max())}


def save_dataset(path: str | Path, data: Dataset, extra: dict | None = None) -> dict:
    """Write `data` atomically; returns the returns summary stored in its attributes."""
    import h5py

    validate(data, str(path))
    summary = returns_summary(data)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for key in KEYS:
                value = getattr(data, key)
                f.create_dataset(key, data=value, compression="gzip" if value.ndim > 1 else None)
            f.attrs.update({"schema": SCHEMA, "env": data.env, "variant": data.variant or "", "kind": data.kind,
                            "seed": int(data.seed), "returns": json.dumps(summary),
                            "extra": json.dumps(extra or {})})
    log.info("wrote %s: %d episodes, %d transitions, mean return %.1f", path, summary["episodes"],
             summary["transitions"], summary["return_mean"])
    return summary


def load_dataset(path: str | Path, env: str | None = None) -> Dataset:
    """Read and validate a dataset; with `env`, it must have been collected in that env."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise UserError(f"dataset {path} does not exist: make one with `paperclub dmpc collect --out {path}`")
    try:
        with h5py.File(path, "r") as f:
            schema = f.attrs.get("schema")
            if schema != SCHEMA:
                raise UserError(f"dataset {path} has schema {schema!r}, not {SCHEMA!r}: re-collect it with "
                                "`paperclub dmpc collect`")
            missing = [k for k in KEYS if k not in f]
            if missing:
                raise UserError(f"dataset {path} lacks {', '.join(missing)}: the file is incomplete; re-collect it")
            arrays = {k: f[k][()] for k in KEYS}
            attrs = dict(f.attrs)
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"dataset {path} cannot be read as HDF5 ({e.__class__.__name__}): the file is corrupt or "
                        "not a dataset; re-collect it with `paperclub dmpc collect`") from e
    data = Dataset(**arrays, env=str(attrs["env"]), variant=str(attrs["variant"]) or None, kind=str(attrs["kind"]),
                   seed=int(attrs["seed"]))
    validate(data, str(path))
    if env is not None and data.env != env:
        raise UserError(f"dataset {path} was collected in env {data.env}, not {env}: pass --env {data.env} or "
                        f"a {env} dataset")
    return data


def validate(data: Dataset, where: str) -> None:
    n = len(data.rewards)
    if n == 0:
        raise UserError(f"dataset {where} holds no transitions")
    for key in KEYS:
        value = getattr(data, key)
        if len(value) != n:
            raise UserError(f"dataset {where}: {key} has {len(value)} rows, rewards {n}; re-collect it")
    if data.observations.shape != data.next_observations.shape or data.observations.ndim != 2:
        raise UserError(f"dataset {where}: observations and next_observations must both be (N, obs_dim)")
    if data.actions.ndim != 2:
        raise UserError(f"dataset {where}: actions must be (N, act_dim)")
    if not data.episode_starts[0]:
        raise UserError(f"dataset {where}: the first row must open an episode (episode_starts[0])")
    for key in ("observations", "actions", "rewards", "next_observations"):
        if not np.isfinite(getattr(data, key)).all():
            raise UserError(f"dataset {where}: {key} holds NaN or inf values; re-collect it")


def discounted_returns(data: Dataset, discount: float) -> np.ndarray:
    """Per row, the discounted sum of rewards from that row to the end of its episode (truncated episodes are not
    bootstrapped)."""
    out = np.zeros(len(data), dtype=np.float64)
    for start, end in data.episode_bounds():
        acc = 0.0
        for i in range(end - 1, start - 1, -1):
            acc = data.rewards[i] + discount * acc
            out[i] = acc
    return out.astype(np.float32)
