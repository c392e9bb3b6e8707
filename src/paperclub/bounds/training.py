"""The training loop the classifiers share (the subspace weights, `compress.py`, and a data-dependent prior's whole
network, `prior.py`), and the optimizer step the language model's loop (`lm_train.py`) takes too."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm


def warmup_cosine(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first 5% of `steps`, then a cosine decay to zero."""
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (i + 1) / warmup if i < warmup else 0.5 * (
        1 + math.cos(math.pi * min(1.0, (i - warmup) / max(1, steps - warmup)))))


def optimizer_step(opt: torch.optim.Optimizer, sched, bar: tqdm, loss: torch.Tensor) -> None:
    """One step on `loss`: gradients, the optimizer, the schedule, the progress bar."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    bar.update()
    bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)


def train_epochs(params: list, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float,
                 batch_size: int, seed: int, desc: str, progress: bool, forward) -> None:
    """`epochs` passes over (x, y) in a seeded order, Adam on `params` with a warm-up and cosine schedule, the loss
    the cross-entropy of `forward(x_batch)`."""
    opt = torch.optim.Adam(params, lr=lr)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = warmup_cosine(opt, steps)
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc=desc, disable=not progress, unit="step")
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = order[i: i + batch_size]
            optimizer_step(opt, sched, bar, F.cross_entropy(forward(x[idx]), y[idx]))
    bar.close()
