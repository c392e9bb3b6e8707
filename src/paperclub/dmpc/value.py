"""D-MPC's terminal value: what the robot will earn after the plan ends, regressed on discounted Monte-Carlo returns.

Two architectures (`ModelConfig.value_arch`), each as K members from different initial weights
(`value_members`), whose spread says where the value is a guess (the planner can score mean - beta * std):

- `mlp`: V(s), an MLP on one state, trained on (s_t, G_t) at every dataset step and applied to the plan's last
  predicted state s_{t+F}.
- `transformer` (the paper's): V(h_t, a_{t:t+F-1}, s_{t+1:t+F}), a transformer that reads the whole plan: the
  context tokens (history and s_t), one token per planned step k = 1..F holding (s_{t+k}, a_{t+k-1}), and a
  read-out token, trained on G_{t+F}, the return from the state the plan reaches. It sees how the plan gets to
  s_{t+F} (a walker toppling and one settling can pass through the same state), at the cost of one pass of a
  denoiser-sized transformer per plan.
"""

from __future__ import annotations

import torch
from torch import nn

from paperclub.dmpc.mlp import EnsembleMLP

ARCHS = ("mlp", "transformer")


class Value(nn.Module):
    """K MLPs on one normalized state."""

    def __init__(self, obs_dim: int, hidden: int, members: int):
        super().__init__()
        self.members = members
        if members == 1:  # the layout of every checkpoint written before ensembles
            self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, 1))
        else:
            self.net = EnsembleMLP(members, obs_dim, 1, hidden, 2)

    def forward(self, states_n: torch.Tensor) -> torch.Tensor:
        """(..., S) normalized states -> (K, ...) normalized returns, one row per member."""
        if self.members == 1:
            return self.net(states_n).squeeze(-1)[None]
        flat = states_n.reshape(1, -1, states_n.shape[-1]).expand(self.members, -1, -1)
        return self.net(flat).view(self.members, *states_n.shape[:-1])


class _PlanReader(nn.Module):
    """One transformer member: context tokens, F plan tokens and a read-out token -> one normalized return."""

    def __init__(self, obs_dim: int, act_dim: int, tokens: int, d_model: int, layers: int, heads: int):
        super().__init__()
        self.context_in = nn.Linear(obs_dim + act_dim, d_model)
        self.step_in = nn.Linear(obs_dim + act_dim, d_model)
        self.readout = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.pos = nn.Parameter(torch.randn(tokens, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, 0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, 1)

    def forward(self, context: torch.Tensor, actions_n: torch.Tensor, states_n: torch.Tensor) -> torch.Tensor:
        steps = self.step_in(torch.cat([states_n, actions_n], dim=-1))
        readout = self.readout.expand(context.shape[0], -1, -1)
        tokens = torch.cat([self.context_in(context), steps, readout], dim=1)
        h = self.encoder(tokens + self.pos[: tokens.shape[1]])
        return self.out(self.norm(h[:, -1]))[:, 0]


class TrajectoryValue(nn.Module):
    """K transformers reading the plan (see the module docstring)."""

    def __init__(self, obs_dim: int, act_dim: int, horizon: int, history: int, d_model: int, layers: int,
                 heads: int, members: int):
        super().__init__()
        self.members = members
        tokens = history + 1 + horizon + 1
        self.nets = nn.ModuleList(_PlanReader(obs_dim, act_dim, tokens, d_model, layers, heads)
                                  for _ in range(members))

    def forward(self, context: torch.Tensor, actions_n: torch.Tensor, states_n: torch.Tensor) -> torch.Tensor:
        """context (B, H+1, S+A) tokens, actions_n (B, F, A) a_{t..t+F-1} and states_n (B, F, S) s_{t+1..t+F},
        normalized -> (K, B) normalized returns from s_{t+F}, one row per member."""
        return torch.stack([net(context, actions_n, states_n) for net in self.nets])
