"""The LeWorldModel (LeWM) network: pixels -> one latent vector per frame -> next latent given actions.

    encoder    small CNN for 64x64 frames, or a ViT (CLS token; `vit-tiny` is the paper's 224 px size)
               -> feature vector
    projector  Linear -> BatchNorm -> GELU -> Linear -> BatchNorm without affine: the latent z (shaped by
               SIGReg, compared by planning). The last BatchNorm fixes each latent's scale, so without SIGReg
               the latents collapse in dimension (all alike) rather than in scale (all near zero)
    action enc MLP over a block of `frameskip` consecutive actions (flattened)
    predictor  causal transformer over the last `history` latents; each token is conditioned on its action
               block with AdaLN-zero; output token i is the prediction of latent i + 1

Training loss (see train.py): MSE(predicted next latents, encoded next latents) + lambda * SIGReg(latents),
gradients through both sides, no EMA target, no stop-gradient; optionally plus the same MSE for the latents
imagined autoregressively from the window's first frame (`imagine`, what planning uses).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from paperclub.errors import UserError
from paperclub.nn.adaln import AdaLNZeroBlock

# the LeWMConfig fields that are sizes or counts: all must be at least 1
SIZES = ("image_size", "feature_dim", "latent_dim", "action_dim", "frameskip", "action_embed_dim", "pred_dim",
         "pred_depth", "pred_heads", "history", "patch_size", "vit_depth", "vit_heads")


@dataclass
class LeWMConfig:
    image_size: int = 64
    channels: tuple[int, ...] = (32, 64, 128)
    feature_dim: int = 256
    latent_dim: int = 64
    action_dim: int = 2
    frameskip: int = 5
    action_embed_dim: int = 64
    pred_dim: int = 128
    pred_depth: int = 3
    pred_heads: int = 4
    history: int = 3
    encoder: str = "cnn"  # "cnn" or "vit"
    patch_size: int = 8  # vit: square patches; width = feature_dim
    vit_depth: int = 4
    vit_heads: int = 4
    # BatchNorm without affine parameters on the latent itself: the latent cannot shrink toward a constant,
    # so the only collapse left to the prediction loss is of dimension, which SIGReg is there to prevent.
    latent_batchnorm: bool = True
    # the frames it reads are antialiased (Push-T's `antialias` rendering); planning renders them the same way
    antialias: bool = False

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        small = [name for name in SIZES if getattr(self, name) < 1]
        if not self.channels or min(self.channels) < 1:
            small.append("channels")
        if small:  # first: the checks below divide by some of them
            raise UserError(f"model sizes must be positive: {', '.join(small)}")
        if self.encoder not in ("cnn", "vit"):
            raise UserError(f"encoder must be cnn or vit, got {self.encoder!r}")
        if self.encoder == "cnn":
            if self.image_size % 8 or self.image_size < 16:
                raise UserError("image_size must be a multiple of 8 and at least 16")
            if self.image_size // (4 * 2 ** (len(self.channels) - 1)) < 1:
                raise UserError("too many encoder stages for this image size")
        elif self.image_size % self.patch_size:
            raise UserError(f"image_size {self.image_size} is not a multiple of the ViT patch size "
                            f"{self.patch_size}: collect the data with a matching --image-size")
        elif self.feature_dim % self.vit_heads:
            raise UserError("ViT: feature_dim must be divisible by vit_heads")
        if self.pred_dim % self.pred_heads:
            raise UserError("pred_dim must be divisible by pred_heads")

    @classmethod
    def from_saved(cls, d: dict) -> LeWMConfig:
        """The config a checkpoint or run directory recorded; those from before the latent BatchNorm have none."""
        return cls(**{"latent_batchnorm": False, **d})

    @property
    def action_block_dim(self) -> int:
        return self.action_dim * self.frameskip

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d


PRESETS = {
    "tiny": dict(
        channels=(16, 32),
        feature_dim=128,
        latent_dim=32,
        action_embed_dim=32,
        pred_dim=64,
        pred_depth=1,
        pred_heads=2,
    ),
    "small": {},
    # a ViT for 64x64 frames: 64 patches of 8x8, width 192, 4 layers
    "vit-small": dict(encoder="vit", patch_size=8, feature_dim=192, vit_depth=4, vit_heads=3),
    # the paper's size: ViT-tiny (width 192, 12 layers, 3 heads) on 224 px frames in 14x14 patches, a 6-layer
    # predictor of width 384; about 15M parameters. Meant for a GPU (`--device cuda`).
    "vit-tiny": dict(encoder="vit", image_size=224, patch_size=14, feature_dim=192, vit_depth=12, vit_heads=3,
                     latent_dim=192, action_embed_dim=192, pred_dim=384, pred_depth=6, pred_heads=16),
}


def preset(name: str, **overrides) -> LeWMConfig:
    if name not in PRESETS:
        raise UserError(f"unknown model config {name!r}: use one of {', '.join(PRESETS)}")
    return LeWMConfig(**{**PRESETS[name], **overrides})


def frames_to_tensor(frames) -> torch.Tensor:
    """uint8 (..., H, W, 3) numpy or tensor -> float (..., 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(frames)
    return x.movedim(-1, -3).float().div(127.5).sub(1.0)


class CNNEncoder(nn.Module):
    """Patchify stem (4x4, stride 4) then stride-2 3x3 convs, flattened to a feature vector."""

    def __init__(self, cfg: LeWMConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, cfg.channels[0], 4, stride=4), nn.GELU()]
        for c_in, c_out in zip(cfg.channels[:-1], cfg.channels[1:], strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        side = cfg.image_size // (4 * 2 ** (len(cfg.channels) - 1))
        self.fc = nn.Linear(cfg.channels[-1] * side * side, cfg.feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(x).flatten(1))


class ViTEncoder(nn.Module):
    """Patch embedding + CLS token + learned positions, pre-norm transformer layers; the CLS output is the
    frame's feature vector (width `feature_dim`)."""

    def __init__(self, cfg: LeWMConfig):
        super().__init__()
        d, n = cfg.feature_dim, (cfg.image_size // cfg.patch_size) ** 2
        self.patch = nn.Conv2d(3, d, cfg.patch_size, stride=cfg.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, cfg.vit_heads, 4 * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.vit_depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (B, patches, d)
        tokens = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos
        return self.norm(self.layers(tokens)[:, 0])


class Projector(nn.Module):
    """MLP with BatchNorm: encoder features -> latent z (optionally batch-normalised, without scale or shift)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, latent_batchnorm: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, d_hidden), nn.BatchNorm1d(d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out)
        )
        if latent_batchnorm:
            self.net.append(nn.BatchNorm1d(d_out, affine=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ActionEncoder(nn.Module):
    def __init__(self, cfg: LeWMConfig):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.action_block_dim, cfg.action_embed_dim),
            nn.SiLU(),
            nn.Linear(cfg.action_embed_dim, cfg.action_embed_dim),
        )

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.net(a)


class Predictor(nn.Module):
    """Causal transformer over latents (B, T<=history, D) conditioned per token on action embeddings."""

    def __init__(self, cfg: LeWMConfig):
        super().__init__()
        self.inp = nn.Linear(cfg.latent_dim, cfg.pred_dim)
        self.pos = nn.Parameter(torch.zeros(cfg.history, cfg.pred_dim))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(
            AdaLNZeroBlock(cfg.pred_dim, cfg.pred_heads, cfg.action_embed_dim) for _ in range(cfg.pred_depth)
        )
        self.norm = nn.LayerNorm(cfg.pred_dim)
        self.out = nn.Linear(cfg.pred_dim, cfg.latent_dim)

    def forward(self, z: torch.Tensor, action_emb: torch.Tensor) -> torch.Tensor:
        t = z.shape[1]
        x = self.inp(z) + self.pos[:t]
        for block in self.blocks:
            x = block(x, action_emb, is_causal=True)
        return self.out(self.norm(x))


class LeWM(nn.Module):
    def __init__(self, cfg: LeWMConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = CNNEncoder(cfg) if cfg.encoder == "cnn" else ViTEncoder(cfg)
        self.projector = Projector(cfg.feature_dim, cfg.feature_dim, cfg.latent_dim, cfg.latent_batchnorm)
        self.action_encoder = ActionEncoder(cfg)
        self.predictor = Predictor(cfg)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (..., 3, H, W) float -> latents (..., latent_dim)."""
        lead = frames.shape[:-3]
        z = self.projector(self.encoder(frames.reshape(-1, *frames.shape[-3:])))
        return z.reshape(*lead, -1)

    def predict(self, z: torch.Tensor, action_blocks: torch.Tensor) -> torch.Tensor:
        """z (B, T, D), action blocks (B, T, frameskip*A) -> predicted latents of frames 1..T (B, T, D)."""
        return self.predictor(z, self.action_encoder(action_blocks))

    def forward(self, frames: torch.Tensor, action_blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, T+1, 3, H, W), action blocks (B, T+1, kA) -> (predicted z[1:], encoded z[0:])."""
        z = self.encode(frames)
        pred = self.predict(z[:, :-1], action_blocks[:, :-1])
        return pred, z

    def imagine(self, z0: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
        """Autoregressive prediction, as planning does it: start latents z0 (B, D), action-block plans (B, H, kA)
        -> the predicted latents after each block (B, H, D). After the first block the predictor reads its own
        predictions, at most the last `history` latents, as in training."""
        zs = [z0]
        h = self.cfg.history
        emb = self.action_encoder(plan)
        for step in range(plan.shape[1]):
            lo = max(0, step + 1 - h)
            z = torch.stack(zs[lo:], dim=1)
            zs.append(self.predictor(z, emb[:, lo : step + 1])[:, -1])
        return torch.stack(zs[1:], dim=1)

    @torch.no_grad()
    def rollout(self, z0: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
        """Imagine without gradients: start latents z0 (B, D), action-block plans (B, H, kA) -> final latent (B, D)."""
        return self.imagine(z0, plan)[:, -1]


def prediction_loss(pred: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, z[:, 1:])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
