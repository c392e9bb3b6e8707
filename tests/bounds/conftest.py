"""Shared test data for the bounds tests."""

from __future__ import annotations

import torch


def separable_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n 28x28 images of two classes that a linear rule separates: bright top half (0) or bright bottom half (1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.3
    y = torch.randint(2, (n,), generator=g)
    x[y == 0, :, :14] += 0.5
    x[y == 1, :, 14:] += 0.5
    return x, y
