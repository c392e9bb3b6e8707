"""SubLoRA (Lotfi et al., "Non-Vacuous Generalization Bounds for Large Language Models", ICML 2024): a language
model whose trained numbers all live in a d-dimensional random subspace of a LoRA adapter.

    theta0    the Llama's initialization, drawn from the prior's seed (no data seen)
    a(w)      = a0 + P w: the adapter's D numbers; a0 is its own initialization (every LoRA A factor random, every
              B factor zero, every 1-D tensor's offset zero) and P a structured random projector (`projectors.py`)
    weights   every matrix W0 + B A (rank r; the embedding too, and with it the tied output layer), every vector
              (the norms) v0 + its offset
    message   w alone: k-means to L levels, fine-tuned through the quantizer (straight-through), range-coded

The prior fixes the architecture, r, d, the projector and the seed before any data is seen, so the bound pays for
w's code and the hyperparameter search alone. Against direct quantization of every weight (`lm_train.py`) the
message shrinks from the model's size to d, and what the model can learn is limited by d and r: LoRA restricts
each matrix's update to rank r, the subspace restricts the adapter to d directions.

On disk: `compressed.json`, format `paperclub-bounds-sublora/1`: the model config, the SubLoRA config, w's code
(base64), the search-space size and `meta`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from paperclub.atomic import write_json
from paperclub.bounds.checkpoint import read_message
from paperclub.bounds.coding import Encoded, decode, encode
from paperclub.bounds.lm_message import model_config
from paperclub.bounds.lm_train import LMTrainConfig, Scorer, next_token_loss, run_steps
from paperclub.bounds.projectors import make_projector
from paperclub.bounds.quantize import as_float16, assign, kmeans_1d, straight_through
from paperclub.errors import UserError
from paperclub.models.config import ModelConfig
from paperclub.models.llama import Llama

log = logging.getLogger(__name__)
FORMAT = "paperclub-bounds-sublora/1"
FILE = "compressed.json"


@dataclass(frozen=True)
class SubLoRAConfig:
    rank: int = 4  # r of every LoRA factor pair
    dim: int = 4096  # d: the numbers trained, quantized and coded
    projector: str = "kronecker"
    seed: int = 0  # draws theta0, the adapter's A factors and P: part of the prior
    lr: float = 0.01  # w's peak learning rate

    def check(self) -> None:
        if self.rank < 1 or self.dim < 1:
            raise UserError(f"SubLoRA needs rank >= 1 and dim >= 1, got rank {self.rank}, dim {self.dim}")
        if not self.lr > 0:
            raise UserError(f"SubLoRA lr {self.lr}: expected > 0")


def base_model(config: ModelConfig, seed: int) -> Llama:
    """theta0: the float32 Llama drawn from `seed` (matrices N(0, 0.02^2), norms at one), the same every time."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Llama(config).float()
        for p in model.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)
    return model.eval().requires_grad_(False)


class SubLoRALM(nn.Module):
    """theta0 + merge(a0 + P w): `forward(tokens, w)` gives the logits of the merged model for windows of tokens."""

    def __init__(self, config: ModelConfig, cfg: SubLoRAConfig):
        super().__init__()
        cfg.check()
        self.config, self.cfg = config, cfg
        self.scorer = Scorer(base_model(config, cfg.seed))
        self.base = dict(self.scorer.named_parameters())  # tied embeddings appear once
        g = torch.Generator().manual_seed(cfg.seed + 2)
        parts, self.layout = [], []
        for name, p in self.base.items():
            if p.dim() == 2:  # A (r, in) with LoRA's usual scale, B (out, r) zero: the update starts at zero
                out_dim, in_dim = p.shape
                parts += [torch.randn(cfg.rank * in_dim, generator=g) / math.sqrt(in_dim),
                          torch.zeros(out_dim * cfg.rank)]
            else:
                parts.append(torch.zeros(p.numel()))
            self.layout.append((name, p.shape))
        self.register_buffer("a0", torch.cat(parts), persistent=False)
        self.adapter_size = self.a0.numel()
        if cfg.dim > self.adapter_size:
            raise UserError(f"SubLoRA dim {cfg.dim} exceeds the adapter's {self.adapter_size} numbers: use at most "
                            "that many (or a larger rank)")
        self.projector = make_projector(cfg.projector, self.adapter_size, cfg.dim, seed=cfg.seed + 1)
        self.w = nn.Parameter(torch.zeros(cfg.dim))

    def merged(self, w: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every tensor of the merged model by name: W0 + B A for matrices, v0 + offset for vectors."""
        a = self.a0 + self.projector(self.w if w is None else w)
        out, i, r = {}, 0, self.cfg.rank
        for name, shape in self.layout:
            base = self.base[name]
            if len(shape) == 2:
                out_dim, in_dim = shape
                A = a[i: i + r * in_dim].view(r, in_dim)
                B = a[i + r * in_dim: i + r * in_dim + out_dim * r].view(out_dim, r)
                out[name] = base + B @ A
                i += r * in_dim + out_dim * r
            else:
                out[name] = base + a[i: i + shape.numel()].view(shape)
                i += shape.numel()
        return out

    def forward(self, tokens: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        return functional_call(self.scorer, self.merged(w), (tokens,))

    @torch.no_grad()
    def materialize(self, w: torch.Tensor, max_positions: int | None = None) -> Llama:
        """A plain Llama holding the merged weights for `w` (to score, or to run in the engine)."""
        model = base_model(self.config, self.cfg.seed)
        params = dict(model.named_parameters())
        for name, value in self.merged(w).items():
            params[name.removeprefix("model.")].copy_(value)
        model.set_rope(max_positions)
        return model


@dataclass
class CompressedSubLoRA:
    config: ModelConfig
    sublora: SubLoRAConfig
    w: Encoded
    search_space: int = 1

    def __post_init__(self) -> None:
        if self.w.dim != self.sublora.dim:
            raise UserError(f"{self.w.dim} coded numbers for a SubLoRA subspace of dimension {self.sublora.dim}")

    @property
    def tensors(self) -> list[tuple[str, Encoded]]:
        return [("w", self.w)]

    def bits(self) -> dict[str, float]:
        parts = {"tensors": float(self.w.bits()["total"]), "search": math.log2(self.search_space)}
        return parts | {"total": parts["tensors"] + parts["search"]}

    def num_params(self) -> int:
        return self.sublora.dim

    def decoded_w(self) -> torch.Tensor:
        indices, centres = decode(self.w)
        return torch.from_numpy(centres.astype(np.float32))[torch.from_numpy(indices)]

    def model(self, max_positions: int | None = None) -> Llama:
        """The decoded model in float32: theta0 and the adapter rebuilt from the seed, w as coded."""
        return SubLoRALM(self.config, self.sublora).materialize(self.decoded_w(), max_positions)


def train_sublora(tokens: np.ndarray, vocab_size: int, lm: LMTrainConfig, cfg: SubLoRAConfig,
                  progress: bool = True) -> SubLoRALM:
    """Train w alone on `tokens` (AdamW, warm-up, cosine to zero; `lm` gives the architecture, windows, batch and
    token budget)."""
    lm.check()
    if len(tokens) < 2 * (lm.seq_len + 1):
        raise UserError(f"{len(tokens)} training tokens: too few for windows of {lm.seq_len + 1}")
    model = SubLoRALM(lm.model_config(vocab_size), cfg)
    total = lm.tokens or len(tokens)
    steps = max(1, total // (lm.batch_size * lm.seq_len))
    log.info("SubLoRA: %d trained numbers for an adapter of %d (rank %d) on a %d-parameter model, %d steps",
             cfg.dim, model.adapter_size, cfg.rank, sum(p.numel() for p in model.base.values()), steps)
    run_steps([model.w], lambda b: next_token_loss(model(b[:, :-1]), b), tokens, lm, steps, cfg.lr, 0.0, lm.seed,
              "train w", progress)
    return model


def quantize_sublora(model: SubLoRALM, tokens: np.ndarray | None, lm: LMTrainConfig,
                     progress: bool = True) -> CompressedSubLoRA:
    """k-means w to `lm.levels` levels, fine-tune w and the centres through the quantizer on `tokens` (skipped when
    `tokens` is None or qat_fraction is 0), and code it."""
    w = nn.Parameter(model.w.detach().clone())
    centres = nn.Parameter(kmeans_1d(w.detach(), min(lm.levels, w.numel())))
    total = lm.tokens or (len(tokens) if tokens is not None else 0)
    steps = int(total * lm.qat_fraction) // (lm.batch_size * lm.seq_len)
    if tokens is not None and steps > 0:
        run_steps([w, centres], lambda b: next_token_loss(model(b[:, :-1], straight_through(w, centres)), b),
                  tokens, lm, steps, model.cfg.lr / 10, 0.0, lm.seed + 1, "quantized", progress)
    stored = as_float16(centres).sort().values
    coded = encode(assign(w.detach(), stored).numpy(), stored.half().numpy())
    return CompressedSubLoRA(model.config, model.cfg, coded, lm.search_space)


def save(path: Path, compressed: CompressedSubLoRA, meta: dict) -> Path:
    """Write `path/compressed.json` atomically."""
    obj = {"format": FORMAT, "config": compressed.config.to_dict(), "sublora": asdict(compressed.sublora),
           "search_space": compressed.search_space, "w": compressed.w.to_dict(), "bits": compressed.bits(),
           "num_params": compressed.num_params(), "meta": meta}
    write_json(Path(path) / FILE, obj, indent=1)
    return Path(path) / FILE


def load(path: Path) -> tuple[CompressedSubLoRA, dict]:
    """The SubLoRA model in a checkpoint folder (or its compressed.json), and its `meta`."""
    file, obj = read_message(path, FORMAT, "SubLoRA language model",
                             "paperclub bounds lm --train --sublora-dim D --save DIR")
    try:
        compressed = CompressedSubLoRA(model_config(obj["config"]), SubLoRAConfig(**obj["sublora"]),
                                       Encoded.from_dict(obj["w"]), int(obj["search_space"]))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{file} is missing or garbles a field ({e}): the checkpoint is corrupt") from None
    return compressed, obj.get("meta", {})
