"""MBOP (Argenson & Dulac-Arnold, "Model-Based Offline Planning", ICLR 2021): D-MPC's main baseline.

Three learned parts, all MLPs trained on the same offline transitions as D-MPC:
- dynamics: an ensemble of K single-step models f_k(s_t, a_t) -> (s_{t+1} - s_t, r_t), each trained on its own
  random batches;
- policy prior: behaviour cloning of a_t from (s_t, a_{t-1}), as MBOP conditions on the previous action;
- value: the discounted Monte-Carlo return from (s_t, a_{t-1}), the terminal value of a rolled-out trajectory.
All inputs and outputs are normalized per dimension; the normalizers are saved with the checkpoint.

Planning is MBOP-Trajopt, an MPPI variant, for E environments at once. Each step, per environment:
  1. N trajectories of horizon H; trajectory n is rolled out by ensemble member n mod K, from s_t and a_{t-1};
  2. at each step h the prior proposes an action, Gaussian noise (sigma, in normalized action units) is added, and
     it is mixed with the previous plan shifted by the actions executed since: a = (1 - beta) a_prior + beta T_{h};
  3. the member predicts the next state (and reward) and the rollout continues from it;
  4. each trajectory's return R_n = sum of rewards + value_weight * V(s_{t+H}, a_{t+H-1}) (the value only if the
     predicted robot is still healthy); the rewards are the planner's objective on the predicted states, as for
     D-MPC (the same objective for both planners), or the ensemble's own reward head (`learned_reward`, MBOP as
     published);
  5. the new plan is the return-weighted average T = sum_n exp(kappa R_n) A_n / sum_n exp(kappa R_n); the first
     `chunk` actions are executed, and the rest of the plan seeds the next call.
The first call of an episode has no previous plan: it uses the prior alone (beta counts from the second call).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from paperclub.atomic import atomic_path
from paperclub.dmpc import checkpoint
from paperclub.dmpc.dataset import Dataset
from paperclub.dmpc.mlp import EnsembleMLP, Transitions, mlp
from paperclub.dmpc.normalizer import Normalizer
from paperclub.dmpc.rewards import Reward, healthy
from paperclub.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class MbopConfig:
    env: str
    obs_dim: int
    act_dim: int
    members: int = 4  # K single-step dynamics models
    hidden: int = 256
    layers: int = 2
    horizon: int = 8  # H, the planning horizon stored as the default
    discount: float = 0.99


@dataclass
class MbopTrainConfig:
    steps: int = 5_000
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    members: int = 4
    hidden: int = 256
    layers: int = 2
    horizon: int = 8


@dataclass
class MbopNormalizers:
    obs: Normalizer
    act: Normalizer
    delta: Normalizer  # s_{t+1} - s_t
    reward: Normalizer  # (1,)
    ret: Normalizer  # (1,)

    def to_dict(self) -> dict:
        return {k: getattr(self, k).to_dict() for k in ("obs", "act", "delta", "reward", "ret")}

    @classmethod
    def from_dict(cls, d: dict) -> MbopNormalizers:
        return cls(**{k: Normalizer.from_dict(v) for k, v in d.items()})

    @classmethod
    def fit(cls, tr: Transitions) -> MbopNormalizers:
        return cls(obs=Normalizer.fit(tr.obs), act=Normalizer.fit(tr.act), delta=Normalizer.fit(tr.next_obs - tr.obs),
                   reward=Normalizer.fit(tr.reward[:, None]), ret=Normalizer.fit(tr.returns[:, None]))


class Mbop(nn.Module):
    """The ensemble, the prior and the value, with their normalizers; the methods take and return env units."""

    def __init__(self, cfg: MbopConfig, norms: MbopNormalizers):
        super().__init__()
        self.cfg, self.norms = cfg, norms
        s, a = cfg.obs_dim, cfg.act_dim
        self.dynamics = EnsembleMLP(cfg.members, s + a, s + 1, cfg.hidden, cfg.layers)  # -> (delta_n, reward_n)
        self.prior = mlp(s + a, a, cfg.hidden, cfg.layers)  # (s_n, a_prev_n) -> a_n
        self.value = mlp(s + a, 1, cfg.hidden, cfg.layers)  # (s_n, a_prev_n) -> return_n

    def _inputs(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.norms.obs.normalize(states), self.norms.act.normalize(actions)], dim=-1)

    @torch.no_grad()
    def step(self, states: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of every member on its own rows: states (K, B, S), actions (K, B, A) -> next states (K, B, S)
        and rewards (K, B)."""
        out = self.dynamics(self._inputs(states, actions))
        delta = self.norms.delta.unnormalize(out[..., :-1])
        reward = self.norms.reward.unnormalize(out[..., -1:])[..., 0]
        return states + delta, reward

    @torch.no_grad()
    def rollout(self, state: torch.Tensor, actions: torch.Tensor, member: int | None = None) -> torch.Tensor:
        """The single-step model rolled out F times: state (B, S), actions (B, F, A) -> predicted s_{t+1..t+F}
        (B, F, S), from one member or (None) the ensemble mean fed back at every step."""
        k = self.cfg.members
        s = state
        out = []
        for h in range(actions.shape[1]):
            nxt, _ = self.step(s.expand(k, *s.shape), actions[:, h].expand(k, *actions[:, h].shape))
            s = nxt.mean(0) if member is None else nxt[member]
            out.append(s)
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def prior_action(self, states: torch.Tensor, prev_actions: torch.Tensor) -> torch.Tensor:
        return self.norms.act.unnormalize(self.prior(self._inputs(states, prev_actions)))

    @torch.no_grad()
    def terminal_value(self, states: torch.Tensor, prev_actions: torch.Tensor) -> torch.Tensor:
        v = self.value(self._inputs(states, prev_actions))
        return self.norms.ret.unnormalize(v)[..., 0]

    def losses(self, tr: Transitions, rows: torch.Tensor, ens_rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """rows (B,) for the prior and value; ens_rows (K, B) one batch per ensemble member."""
        n = self.norms
        x = self._inputs(tr.obs[ens_rows], tr.act[ens_rows])
        target = torch.cat([n.delta.normalize(tr.next_obs[ens_rows] - tr.obs[ens_rows]),
                            n.reward.normalize(tr.reward[ens_rows][..., None])], dim=-1)
        ctx = self._inputs(tr.obs[rows], tr.prev_act[rows])
        return {"dynamics": torch.mean((self.dynamics(x) - target) ** 2),
                "prior": torch.mean((self.prior(ctx) - n.act.normalize(tr.act[rows])) ** 2),
                "value": torch.mean((self.value(ctx) - n.ret.normalize(tr.returns[rows][:, None])) ** 2)}


def train_mbop(data: Dataset, out: Path, cfg: MbopTrainConfig, progress: bool = True, meta: dict | None = None
               ) -> dict:
    """Train the three parts on `data` and write the checkpoint `out` atomically at the end. Returns the last
    losses. (Minutes on a CPU; not resumable: a rerun starts over.)"""
    torch.manual_seed(cfg.seed)
    tr = Transitions.from_dataset(data)
    model = Mbop(MbopConfig(env=data.env, obs_dim=tr.obs.shape[1], act_dim=tr.act.shape[1], members=cfg.members,
                            hidden=cfg.hidden, layers=cfg.layers, horizon=cfg.horizon), MbopNormalizers.fit(tr))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    last: dict = {}
    model.train()
    for step in tqdm(range(1, cfg.steps + 1), desc="train MBOP", unit="step", disable=not progress):
        rows = torch.randint(len(tr), (cfg.batch_size,), generator=gen)
        ens_rows = torch.randint(len(tr), (cfg.members, cfg.batch_size), generator=gen)
        loss = model.losses(tr, rows, ens_rows)
        opt.zero_grad(set_to_none=True)
        sum(loss.values()).backward()
        opt.step()
        if step % 50 == 0 or step == cfg.steps:
            last = {k: v.item() for k, v in loss.items()}
    model.eval()
    save(out, model, {**(meta or {}), "train": asdict(cfg), "losses": last,
                      "dataset": {"env": data.env, "variant": data.variant, "kind": data.kind,
                                  "transitions": len(data)}})
    log.info("trained MBOP %s: losses %s", out, last)
    return last


def save(out: Path, model: Mbop, meta: dict) -> None:
    config = {"format": checkpoint.KINDS["mbop"][0], "model": asdict(model.cfg),
              "normalizers": model.norms.to_dict(), **meta}
    with atomic_path(out) as tmp:
        checkpoint.write_parts(tmp, {"dynamics": model.dynamics, "prior": model.prior, "value": model.value}, config)


def load(path: str | Path, env: str | None = None) -> tuple[Mbop, dict]:
    path = Path(path)
    config = checkpoint.read_config(path, "mbop")
    cfg = MbopConfig(**config["model"])
    checkpoint.check_env(path, cfg.env, env)
    model = Mbop(cfg, MbopNormalizers.from_dict(config["normalizers"]))
    checkpoint.load_parts(path, {"dynamics": model.dynamics, "prior": model.prior, "value": model.value})
    return model.eval(), config


@dataclass
class MppiConfig:
    trajectories: int = 64  # N, a multiple of the ensemble size
    horizon: int | None = None  # H; None: the checkpoint's
    sigma: float = 0.2  # noise std around the prior, in normalized action units
    beta: float = 0.5  # weight of the previous plan in each action
    kappa: float = 1.0  # return weighting: exp(kappa * R)
    chunk: int = 1
    value_weight: float = 1.0
    learned_reward: bool = False  # the ensemble's reward head instead of the objective on predicted states
    seed: int = 0
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None


class MbopPlanner:
    """MBOP-Trajopt (module docstring). `plan` needs to know which episode each row is, to keep its plan:
    run_episodes passes `ids` to planners with `needs_ids`."""

    needs_ids = True

    def __init__(self, model: Mbop, reward: Reward | None, cfg: MppiConfig):
        if cfg.trajectories % model.cfg.members:
            raise UserError(f"--candidates {cfg.trajectories} must be a multiple of the MBOP ensemble size "
                            f"{model.cfg.members} (each trajectory is rolled out by one member)")
        self.model, self.reward, self.cfg = model, reward, cfg
        self.horizon = cfg.horizon or model.cfg.horizon
        if cfg.chunk > self.horizon:
            raise UserError(f"--chunk {cfg.chunk} exceeds the MBOP horizon {self.horizon}")
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.plans: dict[int, torch.Tensor] = {}  # episode id -> its current plan (H, A), env units

    def reset(self) -> None:
        self.plans.clear()

    def returns(self, states: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """R for each trajectory: states (B, H, S) s_{t+1..t+H}, actions (B, H, A), rewards (B, H) from the
        reward head -> (B,)."""
        env = self.model.cfg.env
        total = rewards.sum(1) if self.cfg.learned_reward else self.reward(states, actions).sum(1)
        if self.cfg.value_weight:
            alive = healthy(env, states).all(dim=1).float()
            total = total + self.cfg.value_weight * alive * self.model.terminal_value(states[:, -1], actions[:, -1])
        return total

    @torch.no_grad()
    def plan(self, states: torch.Tensor, actions: torch.Tensor, ids: list[int] | None = None) -> torch.Tensor:
        """states (E, H'+1, S) (s_t last), actions (E, H', A) (a_{t-1} last, or none: zero) -> (E, chunk, A)."""
        m, c = self.model, self.cfg
        e, n, k, horizon, act_dim = states.shape[0], c.trajectories, m.cfg.members, self.horizon, m.cfg.act_dim
        ids = list(range(e)) if ids is None else ids
        prev_plan = [self.plans.get(i) for i in ids]
        has_prev = torch.tensor([p is not None for p in prev_plan], dtype=torch.float32)
        prev = torch.stack([p if p is not None else torch.zeros(horizon, act_dim) for p in prev_plan])  # (E, H, A)
        beta = (c.beta * has_prev).view(e, 1, 1)
        # rows ordered (member, episode, trajectory / K): member k's rows are one contiguous block
        s = states[:, -1].expand(k, n // k, e, -1).transpose(1, 2).reshape(k, e * n // k, -1)
        a_prev = actions[:, -1] if actions.shape[1] else torch.zeros(e, act_dim)
        a_prev = a_prev.expand(k, n // k, e, -1).transpose(1, 2).reshape(k, e * n // k, -1)
        low = torch.tensor(c.low) if c.low is not None else None
        high = torch.tensor(c.high) if c.high is not None else None
        std = m.norms.act.std
        traj_s, traj_a, traj_r = [], [], []
        for h in range(horizon):
            prior = m.prior_action(s, a_prev)
            noise = c.sigma * std * torch.randn(prior.shape, generator=self.generator)
            mix = prev[:, h].view(1, e, 1, act_dim).expand(k, e, n // k, act_dim).reshape(k, e * n // k, act_dim)
            b = beta.view(1, e, 1, 1).expand(k, e, n // k, 1).reshape(k, e * n // k, 1)
            a = (1 - b) * (prior + noise) + b * mix
            if low is not None:
                a = a.clamp(low, high)
            s, r = m.step(s, a)
            traj_s.append(s)
            traj_a.append(a)
            traj_r.append(r)
            a_prev = a
        # back to (E, N, H, .)
        def per_episode(x: list[torch.Tensor]) -> torch.Tensor:
            t = torch.stack(x, dim=2)  # (K, E * N / K, H, .)
            return t.view(k, e, n // k, horizon, -1).transpose(0, 1).reshape(e, n, horizon, -1)

        pred_s, pred_a, pred_r = per_episode(traj_s), per_episode(traj_a), per_episode(traj_r)[..., 0]
        ret = self.returns(pred_s.flatten(0, 1), pred_a.flatten(0, 1), pred_r.flatten(0, 1)).view(e, n)
        weights = torch.softmax(c.kappa * ret, dim=1)  # exp(kappa R) / sum, computed stably
        plan = (weights[..., None, None] * pred_a).sum(1)  # (E, H, A)
        shifted = torch.cat([plan[:, c.chunk:], plan[:, -1:].expand(e, c.chunk, act_dim)], dim=1)
        for row, i in enumerate(ids):
            self.plans[i] = shifted[row]
        return plan[:, : c.chunk]
