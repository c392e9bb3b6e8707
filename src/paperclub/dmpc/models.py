"""The three learned parts of D-MPC and the context they share.

- `Proposal`: rho(a_{t:t+F-1} | s_t, history), a diffusion model over the F future actions.
- `Dynamics`: p(s_{t+1:t+F} | s_t, history, a_{t:t+F-1}), a diffusion model over all F future states at once
  (multi-step: no prediction feeds the next). It models the offsets s_{t+k} - s_t, normalized per step k and
  dimension (the first step's offsets are much smaller than the last's); each step's action
  conditions that step's token.
- `value`: the terminal value, `value.Value` (an MLP on s_{t+F}) or `value.TrajectoryValue` (a transformer on
  the whole plan, the paper's), each as K members whose spread the planner can use for a pessimistic score
  (`value_members`, `value_pessimism`; see value.py).

Context: tokens for (s_{t-H}, a_{t-H}), ..., (s_{t-1}, a_{t-1}), (s_t, 0), all normalized; before an episode's
first step the history repeats the first state with zero actions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from paperclub.dmpc.denoiser import Denoiser, DenoiserConfig
from paperclub.dmpc.diffusion import Diffusion
from paperclub.dmpc.normalizer import Normalizer
from paperclub.dmpc.value import ARCHS, TrajectoryValue, Value


@dataclass
class ModelConfig:
    env: str
    obs_dim: int
    act_dim: int
    horizon: int = 8  # F: future steps proposed and predicted at once
    history: int = 1  # H: past (state, action) pairs in the context besides s_t
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    value_hidden: int = 256
    value_members: int = 1  # K value members (K > 1: an ensemble, for a pessimistic terminal value)
    value_arch: str = "mlp"  # mlp: V(s_{t+F}); transformer: V(h_t, a_{t:t+F-1}, s_{t+1:t+F}) (value.py)
    discount: float = 0.99
    proposal_steps: int = 32  # DDIM steps at planning time (the paper's 32 and 10)
    dynamics_steps: int = 10
    prediction: str = "epsilon"  # the denoisers' target: epsilon (the paper's), sample (x0) or v_prediction

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**{**d, "denoiser": DenoiserConfig(**d["denoiser"])})


@dataclass
class Normalizers:
    obs: Normalizer
    act: Normalizer
    delta: Normalizer  # s_{t+k} - s_t, per step k = 1..F and dimension (flattened to F * S)
    ret: Normalizer  # discounted returns (1-D)

    def to_dict(self) -> dict:
        return {k: getattr(self, k).to_dict() for k in ("obs", "act", "delta", "ret")}

    @classmethod
    def from_dict(cls, d: dict) -> Normalizers:
        return cls(**{k: Normalizer.from_dict(v) for k, v in d.items()})


def context_tokens(states: torch.Tensor, actions: torch.Tensor, norms: Normalizers) -> torch.Tensor:
    """states (B, H+1, S) raw s_{t-H..t}, actions (B, H, A) raw a_{t-H..t-1} -> tokens (B, H+1, S+A)."""
    current = actions.new_zeros(actions.shape[0], 1, actions.shape[-1])
    acts = torch.cat([norms.act.normalize(actions), current], dim=1)
    return torch.cat([norms.obs.normalize(states), acts], dim=-1)


class Proposal(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.diffusion = Diffusion(Denoiser(cfg.act_dim, cfg.horizon, cfg.obs_dim + cfg.act_dim, 0, cfg.denoiser),
                                   prediction=cfg.prediction)

    def loss(self, context: torch.Tensor, actions_n: torch.Tensor) -> torch.Tensor:
        return self.diffusion.loss(actions_n, context)

    def sample(self, context: torch.Tensor, steps: int | None = None, generator=None) -> torch.Tensor:
        """(B, F, A) normalized action sequences."""
        shape = (context.shape[0], self.cfg.horizon, self.cfg.act_dim)
        return self.diffusion.sample(shape, context, steps=steps or self.cfg.proposal_steps, generator=generator)


class Dynamics(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.diffusion = Diffusion(Denoiser(cfg.obs_dim, cfg.horizon, cfg.obs_dim + cfg.act_dim, cfg.act_dim,
                                            cfg.denoiser), prediction=cfg.prediction)

    def loss(self, context: torch.Tensor, actions_n: torch.Tensor, deltas_n: torch.Tensor) -> torch.Tensor:
        return self.diffusion.loss(deltas_n, context, actions_n)

    def sample(self, context: torch.Tensor, actions_n: torch.Tensor, steps: int | None = None,
               generator=None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B, F, S) normalized offsets s_{t+k} - s_t, k = 1..F (from the starting `noise` if given)."""
        shape = (context.shape[0], self.cfg.horizon, self.cfg.obs_dim)
        return self.diffusion.sample(shape, context, actions_n, steps=steps or self.cfg.dynamics_steps,
                                     generator=generator, noise=noise)


def build_value(cfg: ModelConfig) -> nn.Module:
    if cfg.value_arch not in ARCHS:
        raise ValueError(f"value_arch {cfg.value_arch!r}: choose one of {', '.join(ARCHS)}")
    if cfg.value_arch == "transformer":
        d = cfg.denoiser
        return TrajectoryValue(cfg.obs_dim, cfg.act_dim, cfg.horizon, cfg.history, d.d_model, d.layers, d.heads,
                               cfg.value_members)
    return Value(cfg.obs_dim, cfg.value_hidden, cfg.value_members)


class TrajectoryModel(nn.Module):
    """Proposal, dynamics and value with their normalizers, in environment units for the planner."""

    def __init__(self, cfg: ModelConfig, norms: Normalizers):
        super().__init__()
        self.cfg, self.norms = cfg, norms
        self.proposal, self.dynamics, self.value = Proposal(cfg), Dynamics(cfg), build_value(cfg)

    @torch.no_grad()
    def propose(self, context: torch.Tensor, steps: int | None = None, generator=None) -> torch.Tensor:
        """(B, F, A) action sequences in env units."""
        return self.norms.act.unnormalize(self.proposal.sample(context, steps, generator))

    @torch.no_grad()
    def predict(self, context: torch.Tensor, state: torch.Tensor, actions: torch.Tensor, steps: int | None = None,
                generator=None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The states s_{t+1..t+F} (B, F, S) that follow s_t = `state` (B, S) under `actions` (B, F, A)."""
        deltas = self.dynamics.sample(context, self.norms.act.normalize(actions), steps, generator, noise)
        return state[:, None] + self.norms.delta.unnormalize(deltas.flatten(1)).view(deltas.shape)

    @torch.no_grad()
    def terminal_value(self, context: torch.Tensor, actions: torch.Tensor, states: torch.Tensor,
                       pessimism: float = 0.0) -> torch.Tensor:
        """V (B,) in return units for plans: context (B, H+1, S+A) tokens, actions (B, F, A) a_{t..t+F-1} and
        states (B, F, S) s_{t+1..t+F} in env units. The mean over the value members minus `pessimism` times their
        standard deviation (one member: its value). An MLP value reads only s_{t+F}."""
        if self.cfg.value_arch == "transformer":
            members = self.value(context, self.norms.act.normalize(actions), self.norms.obs.normalize(states))
        else:
            members = self.value(self.norms.obs.normalize(states[:, -1]))
        members = self.norms.ret.unnormalize(members[..., None])[..., 0]
        return members.mean(0) - pessimism * members.std(0, unbiased=False)  # one member: a spread of 0
