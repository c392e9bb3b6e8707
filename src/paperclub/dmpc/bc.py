"""Reactive MLP policies a = pi(s): behaviour cloning on a dataset's (state, action) pairs, and (distill.py) the
same network regressed on the D-MPC planner's actions.

The policy maps the normalized state to the normalized action with an MLP trained by mean squared error; actions
are clipped to the env's bounds when executed. A checkpoint is `policy.safetensors` and `config.json` (format
`paperclub.dmpc.bc/1` or `paperclub.dmpc.distilled/1`, the network, the normalizers, training facts)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from paperclub.atomic import atomic_path
from paperclub.dmpc import checkpoint
from paperclub.dmpc.dataset import Dataset
from paperclub.dmpc.mlp import mlp
from paperclub.dmpc.normalizer import Normalizer

log = logging.getLogger(__name__)


@dataclass
class PolicyConfig:
    env: str
    obs_dim: int
    act_dim: int
    hidden: int = 256
    layers: int = 2


@dataclass
class FitConfig:
    steps: int = 5_000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    hidden: int = 256
    layers: int = 2


class Policy(nn.Module):
    def __init__(self, cfg: PolicyConfig, obs_norm: Normalizer, act_norm: Normalizer):
        super().__init__()
        self.cfg, self.obs_norm, self.act_norm = cfg, obs_norm, act_norm
        self.net = mlp(cfg.obs_dim, cfg.act_dim, cfg.hidden, cfg.layers)

    def forward(self, states_n: torch.Tensor) -> torch.Tensor:
        return self.net(states_n)

    @torch.no_grad()
    def act(self, states: torch.Tensor) -> torch.Tensor:
        """(B, S) states -> (B, A) actions, env units."""
        return self.act_norm.unnormalize(self.net(self.obs_norm.normalize(states)))


def fit_policy(states: torch.Tensor, actions: torch.Tensor, env: str, cfg: FitConfig, desc: str,
               progress: bool = True) -> tuple[Policy, float]:
    """Regress a fresh Policy on (states (N, S), actions (N, A)) in env units; returns it (eval mode) and the last
    training loss (normalized units)."""
    torch.manual_seed(cfg.seed)
    states, actions = states.float(), actions.float()
    policy = Policy(PolicyConfig(env=env, obs_dim=states.shape[1], act_dim=actions.shape[1], hidden=cfg.hidden,
                                 layers=cfg.layers), Normalizer.fit(states), Normalizer.fit(actions))
    x, y = policy.obs_norm.normalize(states), policy.act_norm.normalize(actions)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    last = float("nan")
    policy.train()
    for step in tqdm(range(1, cfg.steps + 1), desc=desc, unit="step", disable=not progress):
        rows = torch.randint(len(x), (min(cfg.batch_size, len(x)),), generator=gen)
        loss = torch.mean((policy(x[rows]) - y[rows]) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.steps:
            last = loss.item()
    return policy.eval(), last


def train_bc(data: Dataset, out: Path, cfg: FitConfig, progress: bool = True, meta: dict | None = None) -> float:
    """Behaviour cloning on every (state, action) pair of `data`; writes the checkpoint `out`. Returns the last
    loss."""
    policy, last = fit_policy(torch.as_tensor(data.observations), torch.as_tensor(data.actions), data.env, cfg,
                              "train BC", progress)
    save(out, policy, "bc", {**(meta or {}), "train": asdict(cfg), "loss": last,
                             "dataset": {"env": data.env, "variant": data.variant, "kind": data.kind,
                                         "transitions": len(data)}})
    log.info("trained BC %s: loss %.4f", out, last)
    return last


def save(out: Path, policy: Policy, kind: str, meta: dict) -> None:
    config = {"format": checkpoint.KINDS[kind][0], "model": asdict(policy.cfg),
              "normalizers": {"obs": policy.obs_norm.to_dict(), "act": policy.act_norm.to_dict()}, **meta}
    with atomic_path(out) as tmp:
        checkpoint.write_parts(tmp, {"policy": policy.net}, config)


def load(path: str | Path, kind: str = "bc", env: str | None = None) -> tuple[Policy, dict]:
    path = Path(path)
    config = checkpoint.read_config(path, kind)
    cfg = PolicyConfig(**config["model"])
    checkpoint.check_env(path, cfg.env, env)
    norms = config["normalizers"]
    policy = Policy(cfg, Normalizer.from_dict(norms["obs"]), Normalizer.from_dict(norms["act"]))
    checkpoint.load_parts(path, {"policy": policy.net})
    return policy.eval(), config


class PolicyPlanner:
    """A reactive policy behind the planner interface: one action per call, from the current state only."""

    def __init__(self, policy: Policy):
        self.policy = policy

    @torch.no_grad()
    def plan(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.policy.act(states[:, -1])[:, None]


def actions_per_s(policy: Policy, states: torch.Tensor, seconds: float = 0.5) -> float:
    """Single-state calls per second (batch 1, the latency a robot's control loop sees), over about `seconds`
    of wall time, cycling through `states` (N, S)."""
    planner = PolicyPlanner(policy)
    rows = [states[i: i + 1, None] for i in range(len(states))]
    empty = torch.zeros(1, 0, policy.cfg.act_dim)
    for r in rows[:10]:  # warm-up
        planner.plan(r, empty)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for r in rows[:100]:
            planner.plan(r, empty)
        done += min(100, len(rows))
    return done / (time.perf_counter() - start)
