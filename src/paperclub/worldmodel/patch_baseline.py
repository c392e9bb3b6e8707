"""Patch-token world model, the DINO-WM-style baseline for planning speed.

Each frame becomes many tokens (one per 8x8 patch: 64 tokens for a 64x64 frame) instead of LeWM's single
latent vector. The predictor is a transformer over all tokens of the last `history` frames with a
block-causal mask (a frame's tokens see their own frame and earlier ones) and the same AdaLN-zero action
conditioning; planning cost is the squared distance summed over all patch tokens. It plugs into the same CEM
planner as LeWM (`encode`, `rollout`), so planning time is compared at identical CEM settings.

DINO-WM uses a frozen pretrained DINOv2 encoder (256-384 dim tokens, 196+ patches per frame); here the patch
encoder is a fixed linear patch embedding (no pretrained weights are available offline) and the token width
matches LeWM's predictor width, so this baseline is *smaller* than DINO-WM and the measured speedup is a
conservative one. It is used for timing; it is not trained by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from paperclub.errors import UserError
from paperclub.nn.adaln import AdaLNZeroBlock


@dataclass
class PatchWMConfig:
    image_size: int = 64
    patch_size: int = 8
    dim: int = 128
    depth: int = 3
    heads: int = 4
    action_dim: int = 2
    frameskip: int = 5
    action_embed_dim: int = 64
    history: int = 3

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise UserError("image_size must be a multiple of patch_size")
        if self.dim % self.heads:
            raise UserError("dim must be divisible by heads")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def matched_config(lewm_cfg) -> PatchWMConfig:
    """A patch-token model with the same predictor width/depth/heads and action interface as a LeWM."""
    return PatchWMConfig(
        image_size=lewm_cfg.image_size,
        # 8x8 patches (64 tokens) on 64 px frames; a ViT LeWM's own patches (256 at 224 px, as DINO-WM)
        patch_size=lewm_cfg.patch_size if lewm_cfg.encoder == "vit" and lewm_cfg.image_size > 64 else 8,
        dim=lewm_cfg.pred_dim,
        depth=lewm_cfg.pred_depth,
        heads=lewm_cfg.pred_heads,
        action_dim=lewm_cfg.action_dim,
        frameskip=lewm_cfg.frameskip,
        action_embed_dim=lewm_cfg.action_embed_dim,
        history=lewm_cfg.history,
    )


class PatchWM(nn.Module):
    def __init__(self, cfg: PatchWMConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(3, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.space_pos = nn.Parameter(0.02 * torch.randn(cfg.num_patches, cfg.dim))
        self.time_pos = nn.Parameter(0.02 * torch.randn(cfg.history, cfg.dim))
        self.action_encoder = nn.Sequential(
            nn.Linear(cfg.action_dim * cfg.frameskip, cfg.action_embed_dim),
            nn.SiLU(),
            nn.Linear(cfg.action_embed_dim, cfg.action_embed_dim),
        )
        self.blocks = nn.ModuleList(
            AdaLNZeroBlock(cfg.dim, cfg.heads, cfg.action_embed_dim) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (..., 3, H, W) -> patch tokens (..., P, dim)."""
        lead = frames.shape[:-3]
        tokens = self.patch_embed(frames.reshape(-1, *frames.shape[-3:])).flatten(2).transpose(1, 2)
        return (tokens + self.space_pos).reshape(*lead, self.cfg.num_patches, self.cfg.dim)

    def predict(self, z: torch.Tensor, action_blocks: torch.Tensor) -> torch.Tensor:
        """z (B, T, P, dim), action blocks (B, T, kA) -> predicted tokens of frames 1..T (B, T, P, dim)."""
        b, t, p, d = z.shape
        x = (z + self.time_pos[:t, None, :]).reshape(b, t * p, d)
        cond = self.action_encoder(action_blocks).repeat_interleave(p, dim=1)
        frame_of = torch.arange(t, device=z.device).repeat_interleave(p)
        mask = frame_of[:, None] >= frame_of[None, :]  # block-causal over frames
        for block in self.blocks:
            x = block(x, cond, attn_mask=mask)
        return self.out(self.norm(x)).reshape(b, t, p, d)

    @torch.no_grad()
    def rollout(self, z0: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
        """z0 (B, P, dim), plans (B, H, kA) -> final predicted tokens (B, P, dim)."""
        zs = [z0]
        h = self.cfg.history
        for step in range(plan.shape[1]):
            lo = max(0, step + 1 - h)
            zs.append(self.predict(torch.stack(zs[lo:], dim=1), plan[:, lo : step + 1])[:, -1])
        return zs[-1]
