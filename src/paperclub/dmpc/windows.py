"""Training examples cut from a dataset: at every step t with F steps left in its episode, the context (t's
history), the F future actions and states, the discounted Monte-Carlo return from t, and the return from t+F
where the episode has a step there (what a value that reads the plan is trained on)."""

from __future__ import annotations

import numpy as np
import torch

from paperclub.dmpc.dataset import Dataset, discounted_returns
from paperclub.dmpc.models import Normalizers, context_tokens
from paperclub.dmpc.normalizer import Normalizer


class Windows:
    def __init__(self, data: Dataset, horizon: int, history: int, discount: float):
        self.horizon, self.history = horizon, history
        self.obs = torch.as_tensor(data.observations, dtype=torch.float32)
        self.act = torch.as_tensor(data.actions, dtype=torch.float32)
        self.next_obs = torch.as_tensor(data.next_observations, dtype=torch.float32)
        self.returns = torch.as_tensor(discounted_returns(data, discount))
        start_of = np.zeros(len(data), dtype=np.int64)
        end_of = np.zeros(len(data), dtype=np.int64)
        valid = []
        for start, end in data.episode_bounds():
            start_of[start:end], end_of[start:end] = start, end
            valid.extend(range(start, end - horizon + 1))
        if not valid:
            raise ValueError(f"no episode is {horizon} steps long: lower the horizon")
        self.start_of, self.end_of = torch.as_tensor(start_of), torch.as_tensor(end_of)
        self.valid = torch.as_tensor(np.array(valid, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.valid)

    def fit_normalizers(self) -> Normalizers:
        future = self.valid[:, None] + torch.arange(self.horizon)
        deltas = self.next_obs[future] - self.obs[self.valid][:, None]
        return Normalizers(obs=Normalizer.fit(self.obs), act=Normalizer.fit(self.act),
                           delta=Normalizer.fit(deltas.flatten(1)),
                           ret=Normalizer.fit(self.returns[:, None]))

    def batch(self, rows: torch.Tensor, norms: Normalizers) -> dict[str, torch.Tensor]:
        """Examples at dataset rows `rows` (B,), normalized for training."""
        t = rows
        back = t[:, None] - torch.arange(self.history, -1, -1)  # t-H .. t
        inside = back >= self.start_of[t][:, None]
        back = torch.where(inside, back, self.start_of[t][:, None])
        states = self.obs[back]
        actions = self.act[back[:, :-1]] * inside[:, :-1, None]  # padded history: zero actions
        future = t[:, None] + torch.arange(self.horizon)
        after = t + self.horizon  # the row of s_{t+F}, if the episode has one
        has_after = after < self.end_of[t]
        return {"context": context_tokens(states, actions, norms),
                "actions": norms.act.normalize(self.act[future]),
                "deltas": norms.delta.normalize((self.next_obs[future] - self.obs[t][:, None]).flatten(1))
                .view(len(t), self.horizon, -1),
                "state": norms.obs.normalize(self.obs[t]),
                "returns": norms.ret.normalize(self.returns[t][:, None])[:, 0],
                "future_states": norms.obs.normalize(self.next_obs[future]),
                "returns_after": norms.ret.normalize(self.returns[torch.where(has_after, after, t)][:, None])[:, 0],
                "has_after": has_after}

    def sample(self, batch_size: int, norms: Normalizers, generator: torch.Generator) -> dict[str, torch.Tensor]:
        rows = self.valid[torch.randint(len(self.valid), (batch_size,), generator=generator)]
        return self.batch(rows, norms)
