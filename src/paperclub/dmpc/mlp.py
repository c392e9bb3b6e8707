"""The small networks the baselines are made of: plain MLPs, an ensemble of MLPs evaluated as one batched matmul
per layer (member k sees its own rows), and the single-step transitions they are trained on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from paperclub.dmpc.dataset import Dataset, discounted_returns


def mlp(inputs: int, outputs: int, hidden: int, layers: int) -> nn.Sequential:
    """`layers` hidden layers of width `hidden` with SiLU, then a linear read-out."""
    mods: list[nn.Module] = []
    width = inputs
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    mods.append(nn.Linear(width, outputs))
    return nn.Sequential(*mods)


class EnsembleLinear(nn.Module):
    """K independent linear layers applied at once: x (K, B, in) -> (K, B, out)."""

    def __init__(self, members: int, inputs: int, outputs: int):
        super().__init__()
        bound = 1.0 / math.sqrt(inputs)  # nn.Linear's default initialization, per member
        self.weight = nn.Parameter(torch.empty(members, inputs, outputs).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, outputs).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """K MLPs with the same shape and their own weights; x (K, B, in) -> (K, B, out)."""

    def __init__(self, members: int, inputs: int, outputs: int, hidden: int, layers: int):
        super().__init__()
        self.members = members
        mods: list[nn.Module] = []
        width = inputs
        for _ in range(layers):
            mods += [EnsembleLinear(members, width, hidden), nn.SiLU()]
            width = hidden
        mods.append(EnsembleLinear(members, width, outputs))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class Transitions:
    """One row per dataset transition, as float32 tensors: s_t, a_t, a_{t-1} (zero at an episode's first step),
    s_{t+1}, r_t and the discounted Monte-Carlo return from t."""

    obs: torch.Tensor
    act: torch.Tensor
    prev_act: torch.Tensor
    next_obs: torch.Tensor
    reward: torch.Tensor
    returns: torch.Tensor

    @classmethod
    def from_dataset(cls, data: Dataset, discount: float = 0.99) -> Transitions:
        act = np.asarray(data.actions, dtype=np.float32)
        prev = np.concatenate([np.zeros_like(act[:1]), act[:-1]])
        prev[np.asarray(data.episode_starts, dtype=bool)] = 0.0
        t = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float32))  # noqa: E731
        return cls(obs=t(data.observations), act=t(act), prev_act=t(prev), next_obs=t(data.next_observations),
                   reward=t(data.rewards), returns=torch.as_tensor(discounted_returns(data, discount)))

    def __len__(self) -> int:
        return len(self.reward)
