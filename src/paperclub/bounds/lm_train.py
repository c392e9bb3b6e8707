"""Train a small language model and compress it by direct quantization, for a token-level bound.

    train a Llama on the corpus' training split (AdamW, warm-up, cosine to zero)
    ->  k-means each weight tensor to L levels
    ->  fine-tune with quantization in the loop (straight-through: the full-precision weights and every
        tensor's centres learn)
    ->  range-code each tensor's level indices (`lm_message.py`)

Small models suit the bound: the message is about (parameters x entropy of the levels) bits, and the bound's
slack grows with its square root over the number of training tokens, so tied embeddings and a small vocabulary
pay twice (fewer bits, and a smaller smoothed-loss range).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call
from tqdm import tqdm

from paperclub.bounds.coding import encode
from paperclub.bounds.lm_message import CompressedLM
from paperclub.bounds.quantize import as_float16, assign, kmeans_1d, straight_through
from paperclub.bounds.training import optimizer_step, warmup_cosine
from paperclub.errors import UserError
from paperclub.models.config import ModelConfig
from paperclub.models.llama import Llama

log = logging.getLogger(__name__)
HEAD_DIM = 32


@dataclass(frozen=True)
class LMTrainConfig:
    hidden: int = 32  # model width (a multiple of 32: heads of 32 dimensions)
    layers: int = 2
    seq_len: int = 128  # training windows and the evaluation's context
    tokens: int = 0  # training tokens to read (0: one pass over the training split)
    qat_fraction: float = 0.25  # quantization-aware fine-tuning, as a fraction of `tokens`
    batch_size: int = 32
    lr: float = 3e-3
    qat_lr: float = 5e-4
    weight_decay: float = 0.1
    levels: int = 8  # quantization levels per tensor
    seed: int = 0
    search_space: int = 1  # configurations tried to pick this one: log2 of it is paid

    def check(self) -> None:
        if self.hidden < HEAD_DIM or self.hidden % HEAD_DIM:
            raise UserError(f"hidden {self.hidden}: expected a positive multiple of {HEAD_DIM}")
        for name in ("layers", "seq_len", "batch_size", "levels", "search_space"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} {getattr(self, name)}: expected at least 1")
        if self.tokens < 0 or not 0.0 <= self.qat_fraction <= 1.0 or not (self.lr > 0 and self.qat_lr > 0):
            raise UserError("tokens must be >= 0, qat_fraction in [0, 1] and the learning rates > 0")

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(vocab_size=vocab_size, hidden_size=self.hidden,
                           intermediate_size=int(8 * self.hidden / 3) // 16 * 16, num_layers=self.layers,
                           num_heads=self.hidden // HEAD_DIM, num_kv_heads=self.hidden // HEAD_DIM, head_dim=HEAD_DIM,
                           max_position_embeddings=self.seq_len, tie_word_embeddings=True)


class Scorer(torch.nn.Module):
    """Logits for whole windows: `functional_call` swaps in the quantized tensors."""

    def __init__(self, model: Llama):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.logits(self.model.causal_forward(tokens))


def _windows(tokens: np.ndarray, seq_len: int, batch: int, g: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(tokens) - seq_len - 1, (batch,), generator=g).numpy()
    return torch.from_numpy(np.stack([tokens[s: s + seq_len + 1] for s in starts]).astype(np.int64))


def run_steps(params: list, loss_of, tokens: np.ndarray, cfg: LMTrainConfig, steps: int, lr: float,
              weight_decay: float, seed: int, desc: str, progress: bool) -> None:
    """`steps` AdamW steps (warm-up, cosine to zero) on `loss_of(batch)` over random windows of `tokens`."""
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    sched = warmup_cosine(opt, steps)
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc=desc, disable=not progress, unit="step")
    for _ in range(steps):
        batch = _windows(tokens, cfg.seq_len, cfg.batch_size, g)
        optimizer_step(opt, sched, bar, loss_of(batch))
    bar.close()


def next_token_loss(logits: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def train_lm(tokens: np.ndarray, vocab_size: int, cfg: LMTrainConfig, progress: bool = True) -> Llama:
    """A float32 Llama trained on `tokens` (uint16 ids, documents joined by end-of-text)."""
    cfg.check()
    if len(tokens) < 2 * (cfg.seq_len + 1):
        raise UserError(f"{len(tokens)} training tokens: too few for windows of {cfg.seq_len + 1}")
    torch.manual_seed(cfg.seed)
    model = Llama(cfg.model_config(vocab_size)).float()
    for p in model.parameters():  # small init (the module defaults are sized for other layers)
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.02)
    scorer = Scorer(model)
    total = cfg.tokens or len(tokens)
    steps = max(1, total // (cfg.batch_size * cfg.seq_len))
    log.info("training %d parameters on %d tokens (%d steps)", sum(p.numel() for p in model.parameters()),
             total, steps)
    run_steps(list(model.parameters()), lambda b: next_token_loss(scorer(b[:, :-1]), b), tokens, cfg, steps, cfg.lr,
         cfg.weight_decay, cfg.seed, "train", progress)
    return model.eval()


def quantize_lm(model: Llama, tokens: np.ndarray | None, cfg: LMTrainConfig, progress: bool = True) -> CompressedLM:
    """k-means every tensor to `cfg.levels` levels, fine-tune with quantization in the loop on `tokens` (skipped
    when `tokens` is None or qat_fraction is 0), and code the result."""
    cfg.check()
    scorer = Scorer(model)
    named = [(f"model.{n}", p) for n, p in model.named_parameters()]
    weights = {n: torch.nn.Parameter(p.detach().float().clone()) for n, p in named}
    centres = {n: torch.nn.Parameter(kmeans_1d(w, min(cfg.levels, w.numel()))) for n, w in weights.items()}
    total = cfg.tokens or (len(tokens) if tokens is not None else 0)
    steps = int(total * cfg.qat_fraction) // (cfg.batch_size * cfg.seq_len)
    if tokens is not None and steps > 0:
        def loss_of(batch):
            quantized = {n: straight_through(w.reshape(-1), centres[n]).view(w.shape) for n, w in weights.items()}
            return next_token_loss(functional_call(scorer, quantized, (batch[:, :-1],)), batch)

        run_steps([*weights.values(), *centres.values()], loss_of, tokens, cfg, steps, cfg.qat_lr, 0.0, cfg.seed + 1,
             "quantized", progress)
    coded = []
    for name, w in weights.items():
        stored = as_float16(centres[name]).sort().values
        coded.append((name.removeprefix("model."), encode(assign(w.detach(), stored).numpy(), stored.half().numpy())))
    return CompressedLM(model.cfg, coded, cfg.search_space)
