"""From data to a certified compressed classifier: subspace training, quantization, coding, bound.

    train w in a random subspace  ->  k-means the d weights to L levels  ->  fine-tune with quantization
    in the loop  ->  range-code the level indices  ->  evaluate the decoded model  ->  bound its error

The description length charged to the hypothesis is the coded message plus log2 of the number of
configurations searched (a union bound over the search: pass the size of the grid you tried).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from paperclub.bounds.coding import Encoded, decode, encode
from paperclub.bounds.prior import Prior
from paperclub.bounds.quantize import as_float16, assign, kmeans_1d, straight_through
from paperclub.bounds.subspace import NetConfig, SubspaceConfig, SubspaceNet
from paperclub.bounds.training import train_epochs
from paperclub.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    dim: int = 2000  # intrinsic dimension d
    levels: int = 7  # quantization levels L
    projector: str = "kronecker"
    seed: int = 0  # theta0 and P
    epochs: int = 8
    qat_epochs: int = 2  # quantization-aware fine-tuning after k-means
    lr: float = 0.2
    batch_size: int = 128
    search_space: int = 1  # configurations tried to pick this one (d, L, lr, ...): log2 of it is paid
    net: NetConfig = field(default_factory=NetConfig)

    def check(self) -> None:
        for name in ("dim", "levels", "epochs", "batch_size", "search_space"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} {getattr(self, name)}: expected at least 1")
        if self.qat_epochs < 0 or not self.lr > 0:
            raise UserError("qat_epochs must be >= 0 and lr > 0")

    def subspace(self) -> SubspaceConfig:
        return SubspaceConfig(self.net, self.dim, self.projector, self.seed)


@dataclass
class Compressed:
    """A trained classifier as its message: everything else comes from the seed in `subspace`."""

    subspace: SubspaceConfig
    encoded: Encoded
    search_space: int = 1
    prior: Prior | None = None  # a data-dependent theta0 (free: it is in the prior); None: the seed's initialization

    def bits(self) -> dict[str, float]:
        parts = dict(self.encoded.bits())
        parts["search"] = math.log2(self.search_space)
        parts["total"] = parts["total"] + parts["search"]
        return parts

    def weights(self) -> torch.Tensor:
        """The decoded w: each weight its level's float16 centre."""
        indices, centres = decode(self.encoded)
        return torch.from_numpy(centres.astype(np.float32))[torch.from_numpy(indices)]

    def model(self) -> SubspaceNet:
        net = SubspaceNet(self.subspace, self.prior.theta0 if self.prior else None)
        with torch.no_grad():
            net.w.copy_(self.weights())
        return net.eval()


def train_compressed(x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, progress: bool = True,
                     prior: Prior | None = None) -> Compressed:
    """Train in the subspace (around `prior`'s theta0 where given), quantize, fine-tune the codebook, encode."""
    cfg.check()
    model = SubspaceNet(cfg.subspace(), prior.theta0 if prior else None)
    log.info("subspace training: d=%d of D=%d parameters (%s projector)", cfg.dim, model.num_params, cfg.projector)
    train_epochs([model.w], x, y, cfg.epochs, cfg.lr, cfg.batch_size, cfg.seed, "subspace", progress,
            lambda xb: model(xb))

    centres = torch.nn.Parameter(kmeans_1d(model.w, min(cfg.levels, cfg.dim)))
    if cfg.qat_epochs:
        train_epochs([model.w, centres], x, y, cfg.qat_epochs, cfg.lr / 5, cfg.batch_size, cfg.seed + 1,
                "quantized", progress, lambda xb: model(xb, straight_through(model.w, centres)))

    stored = as_float16(centres).sort().values
    indices = assign(model.w.detach(), stored).numpy()
    return Compressed(cfg.subspace(), encode(indices, stored.half().numpy()), cfg.search_space, prior)

