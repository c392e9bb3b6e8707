"""Certify a compressed language model: its smoothed bits per token and top-1 error on the training tokens, the
token-level bounds they give (`token_bound.py`), and the same measures on the held-out tokens beside them.

The corpus is a folder made by `paperclub scaling prepare` (`tokenizer.json`, `train.u16`, `val.u16`,
`corpus.json`); a model is certified on the training split it was trained on, which its checkpoint names by the
corpus fingerprint. Each split is read as one sequence cut into windows of `seq_len` tokens; a token is predicted
from the tokens before it in its window (the first token of the split from none, so it is not scored).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from paperclub.bounds.lm_message import CompressedLM
from paperclub.bounds.token_bound import ALPHAS, certify_tokens
from paperclub.errors import UserError
from paperclub.models.llama import Llama

CORPUS_FILES = ("corpus.json", "train.u16", "val.u16")


@dataclass(frozen=True)
class LMCorpus:
    root: Path
    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    fingerprint: str


def load_corpus(root: Path) -> LMCorpus:
    root = Path(root)
    missing = [f for f in CORPUS_FILES if not (root / f).is_file()]
    if missing:
        raise UserError(f"{root} is not a prepared corpus (no {', '.join(missing)}): make one with "
                        f"`paperclub scaling prepare --out {root}`")
    try:
        info = json.loads((root / "corpus.json").read_text())
        vocab, fingerprint, counts = int(info["vocab_size"]), str(info["fingerprint"]), info["tokens"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{root}/corpus.json is corrupt ({e}): rebuild the corpus with `paperclub scaling "
                        "prepare --force`") from None
    arrays = {s: np.memmap(root / f"{s}.u16", dtype=np.uint16, mode="r") for s in ("train", "val")}
    for split, arr in arrays.items():
        if len(arr) != counts.get(split) or len(arr) < 2:
            raise UserError(f"{root}/{split}.u16 holds {len(arr):,} tokens, corpus.json says {counts.get(split)}: "
                            "the corpus is truncated; rebuild it with `paperclub scaling prepare --force`")
    return LMCorpus(root, arrays["train"], arrays["val"], vocab, fingerprint)


@dataclass(frozen=True)
class TokenScores:
    smoothed_bits: dict[float, float]  # alpha -> mean smoothed log-loss in bits over the scored tokens
    bits_per_token: float  # unsmoothed
    top1_error: float
    scored: int  # tokens scored, counting repeats of a position drawn more than once


@torch.no_grad()
def score(model: Llama, tokens: np.ndarray, seq_len: int, sample: int = 0, seed: int = 0, batch: int = 32,
          alphas: tuple[float, ...] = ALPHAS, progress: bool = False, desc: str = "score") -> TokenScores:
    """Losses of the tokens at positions 1..m-1 (all of them, or `sample` positions drawn uniformly with
    replacement), each predicted from the tokens before it in its window of `seq_len`."""
    m = len(tokens)
    predicted = m - 1
    if sample:
        drawn = np.random.default_rng(seed).integers(0, predicted, size=sample)
        weight = np.bincount(drawn, minlength=predicted).astype(np.float64)
    else:
        weight = np.ones(predicted)
    rows = np.flatnonzero(np.add.reduceat(weight, np.arange(0, predicted, seq_len)) > 0)
    V = model.cfg.vocab_size
    a = torch.tensor(alphas, dtype=torch.float64)
    smoothed, plain, wrong = torch.zeros(len(alphas), dtype=torch.float64), 0.0, 0.0
    bar = tqdm(total=len(rows), desc=desc, disable=not progress, unit="window")
    for i in range(0, len(rows), batch):
        chunk = rows[i: i + batch]
        windows = [np.asarray(tokens[r * seq_len: r * seq_len + seq_len + 1], dtype=np.int64) for r in chunk]
        width = max(len(w) for w in windows)
        x = torch.zeros(len(windows), width, dtype=torch.int64)
        w = torch.zeros(len(windows), width - 1, dtype=torch.float64)
        for j, (r, win) in enumerate(zip(chunk, windows, strict=True)):
            x[j, : len(win)] = torch.from_numpy(win)
            w[j, : len(win) - 1] = torch.from_numpy(weight[r * seq_len: r * seq_len + len(win) - 1])
        logits = model.logits(model.causal_forward(x[:, :-1]))  # float32
        target = x[:, 1:]
        logp = (logits.gather(-1, target[..., None])[..., 0] - torch.logsumexp(logits, -1)).double()
        p = logp.exp()
        plain += float(-(logp * w).sum()) / math.log(2)
        wrong += float(((logits.argmax(-1) != target).double() * w).sum())
        mix = (1 - a)[:, None, None] * p[None] + (a / V)[:, None, None]  # (alphas, B, T)
        smoothed += -(torch.log2(mix) * w[None]).sum(dim=(1, 2))
        bar.update(len(chunk))
    bar.close()
    n = float(weight.sum())
    return TokenScores({alpha: float(s) / n for alpha, s in zip(alphas, smoothed, strict=True)}, plain / n,
                       wrong / n, int(n))


def certify_lm(compressed: CompressedLM, corpus: LMCorpus, seq_len: int, delta: float = 0.05, sample: int = 0,
               val_sample: int = 0, seed: int = 0, progress: bool = True) -> dict:
    """The lm JSON: the bounds on bits per token and top-1 error, what they are made of, and the held-out figures."""
    if compressed.config.vocab_size != corpus.vocab_size:
        raise UserError(f"the model predicts {compressed.config.vocab_size} token ids but the corpus at "
                        f"{corpus.root} has a vocabulary of {corpus.vocab_size}: it was trained on another corpus")
    n_train = len(corpus.train) - 1
    if sample < 0 or sample > n_train:
        raise UserError(f"--eval-tokens {sample}: expected 0 (all) up to {n_train:,} training tokens")
    model = compressed.model(max_positions=seq_len)
    train = score(model, corpus.train, seq_len, sample, seed, progress=progress, desc="train tokens")
    val = score(model, corpus.val, seq_len, min(val_sample, len(corpus.val) - 1), seed, progress=progress,
                desc="val tokens")
    bits = compressed.bits()
    cert = certify_tokens(train.smoothed_bits, train.top1_error, bits["total"], corpus.vocab_size, n_train,
                          train.scored, delta)
    return {
        "bound_bits_per_token": cert.bound_bits_per_token,
        "bound_top1_error": cert.bound_top1_error,
        "test_bits_per_token": val.bits_per_token,
        "test_top1_error": val.top1_error,
        "test_smoothed_bits_per_token": val.smoothed_bits[cert.alpha],
        "train_bits_per_token": train.bits_per_token,
        "train_smoothed_bits_per_token": cert.train_bits_per_token,
        "train_top1_error": train.top1_error,
        "vacuous_bits_per_token": math.log2(corpus.vocab_size),
        "alpha": cert.alpha,
        "bound_per_alpha": {str(a): b for a, b in cert.per_alpha.items()},
        "compressed_bits": bits["total"],
        "bits": bits,
        "num_params": compressed.num_params(),
        "bits_per_param": bits["tensors"] / compressed.num_params(),
        "n_train": n_train,
        "n_evaluated": train.scored,
        "n_test": val.scored,
        "seq_len": seq_len,
        "delta": delta,
        "vocab_size": corpus.vocab_size,
        "corpus": {"root": str(corpus.root), "fingerprint": corpus.fingerprint},
        "model": {"hidden": compressed.config.hidden_size, "layers": compressed.config.num_layers,
                  "levels": max(enc.levels for _, enc in compressed.tensors),
                  "compression": "sublora" if hasattr(compressed, "sublora") else "direct quantization",
                  **({"sublora": asdict(compressed.sublora)} if hasattr(compressed, "sublora") else {})},
    }
