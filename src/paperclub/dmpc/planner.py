"""SSR, sample-score-rank: D-MPC's planner.

For each of E environments at once:
  1. sample N action sequences a_{t:t+F-1} from the proposal, given s_t and its history;
  2. predict each sequence's states s_{t+1:t+F} with the multi-step dynamics model, all N from the same starting
     noise (common random numbers: the candidates then differ by their actions, not by the sampler's noise, which
     on an imperfect model raised the correlation of predicted with true returns on Pendulum from 0.5 to 0.85);
     with `dynamics_samples` M > 1, M such predictions per candidate, each from its own shared noise;
  3. score J = sum_k reward(s_{t+k+1}, a_{t+k}) + value_weight * V (V only if the predicted robot is still
     healthy at t+F; V reads s_{t+F}, or the whole plan with a transformer value; with a value ensemble and
     `value_pessimism` beta, V = mean - beta * std over its members), averaged over the M predictions (the
     expected J under the model's predictive distribution: a candidate that falls in some of its futures scores
     lower than one that falls in none);
  4. return the first `chunk` actions of the best-scoring sequence; the caller executes them and replans.
All E * N candidates go through the models as one batch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from paperclub.dmpc.models import TrajectoryModel, context_tokens
from paperclub.dmpc.rewards import Reward, healthy


@dataclass
class PlannerConfig:
    candidates: int = 64  # N
    chunk: int = 1  # actions executed per plan
    proposal_steps: int | None = None  # DDIM steps; None: the checkpoint's
    dynamics_steps: int | None = None
    value_weight: float = 1.0  # 0 for rewards the value was not trained on
    value_pessimism: float = 0.0  # beta: V = mean - beta * std over the checkpoint's value members
    shared_noise: bool = True  # one dynamics starting noise per environment, shared by its N candidates
    dynamics_samples: int = 1  # M predicted futures per candidate; J is their mean
    seed: int = 0
    low: tuple[float, ...] | None = None  # the action bounds proposals are clipped to
    high: tuple[float, ...] | None = None


class SSRPlanner:
    def __init__(self, model: TrajectoryModel, reward: Reward, cfg: PlannerConfig):
        self.model, self.reward, self.cfg = model, reward, cfg
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def score(self, states: torch.Tensor, actions: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """J for each candidate: states (B, F, S) predicted s_{t+1..t+F}, actions (B, F, A), context (B, H+1, S+A)
        its context tokens -> (B,)."""
        total = self.reward(states, actions).sum(dim=1)
        if self.cfg.value_weight:
            still_alive = healthy(self.model.cfg.env, states).all(dim=1).float()
            total = total + self.cfg.value_weight * still_alive * self.model.terminal_value(
                context, actions, states, self.cfg.value_pessimism)
        return total

    def context(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The context tokens of E environments (see `candidates`), each repeated for its N candidates."""
        return context_tokens(states, actions, self.model.norms).repeat_interleave(self.cfg.candidates, dim=0)

    @torch.no_grad()
    def candidates(self, states: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1 and 2 for E environments: states (E, H+1, S) the last H+1 observed states (s_t last), actions
        (E, H, A) the actions between them -> the N proposals per environment (E * N, F, A) and their M predicted
        futures s_{t+1..t+F} (M, E * N, F, S), environment by environment."""
        n, e, m = self.cfg.candidates, states.shape[0], self.cfg.dynamics_samples
        context = self.context(states, actions)
        current = states[:, -1].repeat_interleave(n, dim=0)
        # 1. sample
        proposals = self.model.propose(context, self.cfg.proposal_steps, self.generator)
        if self.cfg.low is not None:
            proposals = proposals.clamp(torch.tensor(self.cfg.low), torch.tensor(self.cfg.high))
        # 2. predict, M futures per candidate in one batch (future-major)
        noise = None
        if self.cfg.shared_noise:
            f, s = self.model.cfg.horizon, self.model.cfg.obs_dim
            noise = torch.randn((e, m, f, s), generator=self.generator).transpose(0, 1)  # (M, E, F, S)
            noise = noise[:, :, None].expand(m, e, n, f, s).reshape(m * e * n, f, s)
        rep = (lambda x: x.repeat(m, *([1] * (x.dim() - 1)))) if m > 1 else (lambda x: x)
        predicted = self.model.predict(rep(context), rep(current), rep(proposals), self.cfg.dynamics_steps,
                                       self.generator, noise)
        return proposals, predicted.view(m, e * n, *predicted.shape[1:])

    @torch.no_grad()
    def plan(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """states (E, H+1, S), actions (E, H, A) as in `candidates` -> (E, chunk, A) the actions to execute."""
        n, e = self.cfg.candidates, states.shape[0]
        proposals, predicted = self.candidates(states, actions)
        # 3. score, averaged over the predicted futures
        context = self.context(states, actions)
        scores = torch.stack([self.score(future, proposals, context) for future in predicted]).mean(0).view(e, n)
        # 4. rank: the best candidate's first actions
        best = scores.argmax(dim=1)
        return proposals.view(e, n, *proposals.shape[1:])[torch.arange(e), best, : self.cfg.chunk]


class RandomPlanner:
    """Uniform random actions: the normalization floor, and the baseline the tests must beat."""

    def __init__(self, low: np.ndarray, high: np.ndarray, seed: int = 0, chunk: int = 1):
        self.low, self.high, self.chunk = torch.as_tensor(low), torch.as_tensor(high), chunk
        self.generator = torch.Generator().manual_seed(seed)

    def plan(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        u = torch.rand((states.shape[0], self.chunk, self.low.numel()), generator=self.generator)
        return self.low + u * (self.high - self.low)


class History:
    """The last H+1 states and H actions of one episode, padded at its start as in training."""

    def __init__(self, history: int, first_state: np.ndarray, act_dim: int):
        self.states = deque([first_state] * (history + 1), maxlen=history + 1)
        self.actions = deque([np.zeros(act_dim)] * history, maxlen=history)
        self.act_dim = act_dim

    def copy(self) -> History:
        """An independent copy: pushing to one leaves the other as it was."""
        twin = History.__new__(History)
        twin.states, twin.actions, twin.act_dim = self.states.copy(), self.actions.copy(), self.act_dim
        return twin

    def push(self, action: np.ndarray, state: np.ndarray) -> None:
        if self.actions.maxlen:
            self.actions.append(action)
        self.states.append(state)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        states = torch.as_tensor(np.stack(self.states), dtype=torch.float32)
        actions = np.stack(self.actions) if self.actions else np.zeros((0, self.act_dim))
        return states, torch.as_tensor(actions, dtype=torch.float32)
