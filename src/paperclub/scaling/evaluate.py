"""Validation loss of one model or of an ensemble, per chunk, so that fits can bootstrap over documents.

The validation set is the first `val_tokens` tokens of the validation split cut into non-overlapping chunks of
`seq_len` tokens, each scored from position 0. An ensemble's prediction averages its members' logits before the
softmax (as the paper does); a one-member ensemble is that member. Losses are in nats per token.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from paperclub.errors import UserError
from paperclub.models.llama import Llama


def val_chunks(val: np.ndarray, val_tokens: int, seq_len: int, eot: int) -> tuple[torch.Tensor, np.ndarray]:
    """(chunks (n, seq_len + 1) int64, the validation document each chunk starts in (n,)) for the first
    `val_tokens` tokens of the validation split."""
    n = val_tokens // seq_len
    if n < 1 or n * seq_len + 1 > len(val):
        raise UserError(f"val_tokens {val_tokens:,}: the validation split holds {len(val):,} tokens and a chunk is "
                        f"{seq_len}; choose between {seq_len} and {len(val) - 1:,}")
    ids = np.asarray(val[: n * seq_len + 1], dtype=np.int64)
    starts = np.arange(n) * seq_len
    chunks = np.stack([ids[s: s + seq_len + 1] for s in starts])
    doc_of_token = np.concatenate([[0], np.cumsum(ids[:-1] == eot)])
    return torch.from_numpy(chunks), doc_of_token[starts]


@torch.no_grad()
def ensemble_logits(models: list[Llama], tokens: torch.Tensor) -> torch.Tensor:
    """Next-token logits of the ensemble of `models` on `tokens` (batch, time): the members' logits averaged, the
    paper's way of combining members."""
    logits = None
    for m in models:
        member = m.logits(m.causal_forward(tokens))
        logits = member if logits is None else logits.add_(member)
    return logits / len(models)


def chunk_losses(models: list[Llama], chunks: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """Mean next-token loss of each chunk under the ensemble of `models` (logits averaged over members)."""
    if not models:
        raise ValueError("an ensemble needs at least one member")
    out = []
    for i in range(0, len(chunks), batch_size):
        block = chunks[i: i + batch_size]
        logits = ensemble_logits(models, block[:, :-1])
        nll = F.cross_entropy(logits.view(-1, logits.shape[-1]), block[:, 1:].reshape(-1), reduction="none")
        out.append(nll.view(len(block), -1).mean(1).double().numpy())
    return np.concatenate(out)
