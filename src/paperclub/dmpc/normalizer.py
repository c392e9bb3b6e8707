"""Per-dimension mean/std normalization, stored with the checkpoint as plain lists."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Normalizer:
    mean: torch.Tensor  # (dim,)
    std: torch.Tensor  # (dim,)

    @classmethod
    def fit(cls, x, min_std: float = 1e-3) -> Normalizer:
        """From data (..., dim): the mean and std over all leading axes; std floored so constant dims stay finite."""
        x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, x.shape[-1])
        return cls(x.mean(0), x.std(0).clamp(min=min_std))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        return cls(torch.tensor(d["mean"], dtype=torch.float32), torch.tensor(d["std"], dtype=torch.float32))
