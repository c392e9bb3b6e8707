"""A data-dependent prior: theta0 trained on one part of the training set, the bound taken on the other.

A PAC-Bayes prior may depend on anything independent of the examples the bound is computed on. Split the
training set once, by a seeded permutation, into a prior part (`fraction` of it) and a bound part. Train the
whole network on the prior part; its weights become theta0, the centre of the random subspace. Then train w on
the bound part around that theta0, compress it, and certify with the bound part's size n and its training error:
theta0 is free (it is in the prior), and a good theta0 leaves w little to say. Lotfi et al. (NeurIPS 2022) use
the same device; the figure it gives is reported apart from the data-independent one, and labelled.

On disk theta0 is `prior.safetensors` beside the checkpoint's `compressed.json`, which records the split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from paperclub.atomic import atomic_path
from paperclub.bounds.subspace import NetConfig, build_net
from paperclub.bounds.training import train_epochs
from paperclub.errors import UserError

FILE = "prior.safetensors"


@dataclass(frozen=True)
class PriorConfig:
    fraction: float = 0.5  # of the training set, used for theta0 and never for the bound
    split_seed: int = 0  # the permutation that splits the training set
    epochs: int = 6
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0  # the network's initialization and the batch order

    def check(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise UserError(f"prior fraction {self.fraction}: expected a fraction in (0, 1)")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise UserError("prior epochs and batch size must be >= 1 and its lr > 0")

    @classmethod
    def from_dict(cls, d: dict) -> PriorConfig:
        try:
            return cls(**d)
        except TypeError as e:
            raise UserError(f"not a prior config this version knows: {e}") from None


def split(n_total: int, cfg: PriorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(prior part, bound part): index tensors that partition range(n_total), drawn from `split_seed` alone."""
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(cfg.split_seed))
    n_prior = int(round(cfg.fraction * n_total))
    if not 0 < n_prior < n_total:
        raise UserError(f"prior fraction {cfg.fraction} of {n_total} examples leaves one part empty")
    return order[:n_prior], order[n_prior:]


@dataclass
class Prior:
    """theta0 (the flat parameter vector of the network) and how it was made."""

    theta0: torch.Tensor
    cfg: PriorConfig

    def to_dict(self) -> dict:
        return {"file": FILE, **asdict(self.cfg)}


def train_prior(x: torch.Tensor, y: torch.Tensor, net_cfg: NetConfig, cfg: PriorConfig,
                progress: bool = True) -> Prior:
    """Train every weight of the network on (x, y), the prior part (`training.train_epochs`)."""
    cfg.check()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_net(net_cfg)
    train_epochs(list(net.parameters()), x, y, cfg.epochs, cfg.lr, cfg.batch_size, cfg.seed, "prior", progress, net)
    theta0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    return Prior(theta0, cfg)


def save(folder: Path, prior: Prior) -> None:
    with atomic_path(Path(folder) / FILE) as tmp:
        save_file({"theta0": prior.theta0.contiguous()}, str(tmp))


def load(folder: Path, meta: dict, net_cfg: NetConfig) -> Prior:
    """The prior a checkpoint names in its JSON (`meta`), checked against the network's parameter count."""
    num_params = sum(p.numel() for p in build_net(net_cfg).parameters())
    file = Path(folder) / meta.get("file", FILE)
    if not file.is_file():
        raise UserError(f"{file} is missing: the checkpoint's bound uses a data-dependent prior stored there")
    try:
        theta0 = load_file(str(file))["theta0"]
    except (SafetensorError, KeyError, OSError) as e:
        raise UserError(f"{file} is not a prior this version can read ({e}): the checkpoint is corrupt") from None
    if theta0.shape != (num_params,) or theta0.dtype != torch.float32:
        raise UserError(f"{file} holds {tuple(theta0.shape)} {theta0.dtype} weights, not the network's "
                        f"{num_params} float32 ones: it belongs to another architecture")
    cfg = PriorConfig.from_dict({k: v for k, v in meta.items() if k != "file"})
    cfg.check()
    return Prior(theta0, cfg)
