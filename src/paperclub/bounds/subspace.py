"""A network trained in a random subspace: its weights are theta0 + P w, and only w (d numbers) is learned.

theta0 (the network's usual initialization) and P (a random projector) both come from one seed fixed before
training, so they belong to the PAC-Bayes prior and cost nothing to describe; the hypothesis is w alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.func import functional_call

from paperclub.bounds.projectors import make_projector
from paperclub.errors import UserError


@dataclass(frozen=True)
class NetConfig:
    """A small convolutional classifier for 28x28 grey images (no batch norm: nothing but w may depend on data)."""

    arch: str = "cnn"
    channels: tuple[int, int] = (16, 32)
    hidden: int = 64
    num_classes: int = 10

    @classmethod
    def from_dict(cls, d: dict) -> NetConfig:
        try:
            return cls(**{**d, "channels": tuple(d["channels"])})
        except (TypeError, KeyError) as e:
            raise UserError(f"not a network config this version knows: {e}") from None


def build_net(cfg: NetConfig) -> nn.Module:
    if cfg.arch != "cnn":
        raise UserError(f"unknown architecture {cfg.arch!r}: expected 'cnn'")
    c1, c2 = cfg.channels
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 7 * 7, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.num_classes),
    )


@dataclass(frozen=True)
class SubspaceConfig:
    net: NetConfig
    dim: int  # the intrinsic dimension d
    projector: str = "kronecker"
    seed: int = 0  # draws theta0 and P: part of the prior, chosen before seeing data

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SubspaceConfig:
        try:
            return cls(net=NetConfig.from_dict(d["net"]), dim=int(d["dim"]), projector=d["projector"],
                       seed=int(d["seed"]))
        except (TypeError, KeyError, ValueError) as e:
            raise UserError(f"not a subspace config this version knows: {e}") from None


class SubspaceNet(nn.Module):
    """`theta0`: a data-dependent prior's weights (`prior.py`) in place of the network's initialization."""

    def __init__(self, cfg: SubspaceConfig, theta0: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):  # theta0: the network's own initialization, from the prior's seed
            torch.manual_seed(cfg.seed)
            self.net = build_net(cfg.net)
        self.net.requires_grad_(False)
        self.names = [n for n, _ in self.net.named_parameters()]
        self.shapes = [p.shape for _, p in self.net.named_parameters()]
        init = torch.cat([p.detach().reshape(-1) for p in self.net.parameters()])
        if theta0 is not None and theta0.shape != init.shape:
            raise UserError(f"a prior of {theta0.numel()} weights for a network of {init.numel()}")
        theta0 = init if theta0 is None else theta0.to(init.dtype)
        self.register_buffer("theta0", theta0, persistent=False)
        self.num_params = theta0.numel()
        self.projector = make_projector(cfg.projector, self.num_params, cfg.dim, seed=cfg.seed + 1)
        self.w = nn.Parameter(torch.zeros(cfg.dim))

    def theta(self, w: torch.Tensor | None = None) -> torch.Tensor:
        return self.theta0 + self.projector(self.w if w is None else w)

    def forward(self, x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        flat = self.theta(w)
        params, i = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            n = shape.numel()
            params[name] = flat[i: i + n].view(shape)
            i += n
        return functional_call(self.net, params, (x,))


@torch.no_grad()
def error_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None,
               batch: int = 2000) -> float:
    """Top-1 error over all of (x, y)."""
    wrong = 0
    for i in range(0, len(x), batch):
        logits = model(x[i: i + batch], w) if w is not None else model(x[i: i + batch])
        wrong += int((logits.argmax(-1) != y[i: i + batch]).sum())
    return wrong / len(x)
