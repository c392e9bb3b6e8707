"""Sampling parameters and the per-row samplers every decoding mode shares.

A row's distribution is the *filtered* target distribution: temperature, then top-k, then top-p (the order
transformers uses). Temperature 0 means greedy, represented as a one-hot distribution at the argmax, so the
speculative acceptance rule needs no special case for it. Randomness comes from one `torch.Generator` per
request, drawn one uniform at a time: a request's output depends on its seed only, not on its batch-mates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from paperclub.errors import UserError
from paperclub.nn.cpu_kernels import cpu_kernel

MAX_LOGPROBS = 20


@dataclass
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # record each token's log-probability and this many top alternatives (0..20)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        checks = [
            (isinstance(self.max_tokens, int) and self.max_tokens >= 1,
             f"max_tokens must be >= 1, got {self.max_tokens}"),
            (isinstance(self.temperature, int | float) and math.isfinite(self.temperature) and self.temperature >= 0,
             f"temperature must be a finite number >= 0, got {self.temperature}"),
            (isinstance(self.top_k, int) and self.top_k >= 0,
             f"top_k must be an integer >= 0 (0 = off), got {self.top_k}"),
            (isinstance(self.top_p, int | float) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.seed is None or isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}"),
            (all(isinstance(s, str) and s for s in self.stop), "stop must be a list of non-empty strings"),
            (all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids), "stop_token_ids must be token ids >= 0"),
            (self.logprobs is None or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= MAX_LOGPROBS),
             f"logprobs must be an integer in [0, {MAX_LOGPROBS}] or None, got {self.logprobs!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def make_generator(seed: int | None) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
    return g


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """`logits.argmax(-1)`, the same answer (first maximum; first NaN), on the CPU kernel for float32 CPU logits:
    torch's takes 1 ms over 16 rows of a 49152-token vocabulary here, a sixtieth of it."""
    if logits.device.type != "cpu" or logits.dtype != torch.float32 or logits.numel() == 0:
        return logits.argmax(-1)
    kernels = cpu_kernel()
    if kernels is None:
        return logits.argmax(-1)
    return kernels.argmax(logits.reshape(-1, logits.shape[-1])).view(logits.shape[:-1])


def filtered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """(B, V) float32 logits -> (B, V) float32 probabilities of each row's filtered distribution."""
    logits = logits.float()
    probs = torch.empty_like(logits)
    greedy = [i for i, p in enumerate(params) if p.greedy]
    if greedy:
        rows = torch.tensor(greedy, device=logits.device)
        probs[rows] = 0.0
        probs[rows, greedy_tokens(logits[rows])] = 1.0
    for i, p in enumerate(params):
        if p.greedy:
            continue
        x = logits[i] / p.temperature
        if p.top_k and p.top_k < x.numel():
            kth = torch.topk(x, p.top_k).values[-1]
            x = x.masked_fill(x < kth, -math.inf)
        if p.top_p < 1.0:
            sorted_x, order = torch.sort(x, descending=True)
            cum = sorted_x.softmax(-1).cumsum(-1)
            drop = cum - sorted_x.softmax(-1) >= p.top_p  # tokens whose predecessors already reach top_p
            x = x.scatter(0, order, sorted_x.masked_fill(drop, -math.inf))
        probs[i] = x.softmax(-1)
    return probs


def sample(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row by inverse-CDF sampling with each row's own generator. (B, V) -> (B,)"""
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators]).to(probs.device)
    return sample_with_uniforms(probs, u)


def sample_with_uniforms(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    cdf = probs.double().cumsum(-1)
    u = u * cdf[:, -1]  # the total is 1 up to rounding: scale so every u lands inside
    idx = torch.searchsorted(cdf, u[:, None], right=True).squeeze(-1)
    idx = idx.clamp_(max=probs.shape[-1] - 1)
    # never return a zero-probability token (possible only at float rounding edges)
    bad = probs.gather(-1, idx[:, None]).squeeze(-1) <= 0
    if bad.any():
        idx[bad] = probs[bad].argmax(-1)
    return idx


def next_tokens(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]) -> torch.Tensor:
    """Sample the next token of each row: argmax for greedy rows, filtered sampling for the rest."""
    if all(p.greedy for p in params):
        return greedy_tokens(logits)
    return sample(filtered_probs(logits, params), generators)


def top_logprobs(lp: torch.Tensor, n: int) -> list[tuple[int, float]]:
    """The n largest entries of one row of log-probabilities as (token, logprob), ties in token order: the order
    greedy decoding breaks them in (argmax takes the first maximum), so a greedy token is always listed first.
    `topk` alone orders ties arbitrarily; a full sort of the vocabulary costs 40x more."""
    threshold = lp.topk(n).values[-1]
    ids = (lp >= threshold).nonzero().squeeze(1)  # ascending ids; more than n only where the n-th value is tied
    order = torch.sort(lp[ids], descending=True, stable=True).indices[:n]
    return list(zip(ids[order].tolist(), lp[ids[order]].tolist(), strict=True))


def record_logprobs(seqs: list, logits: torch.Tensor, emitted: list[list[int]]) -> None:
    """For each row whose request asked for logprobs, append to `seq.logprobs` one (logprob, top) per emitted token:
    its log-probability under the model's raw distribution at that position (before temperature, top-k and top-p,
    as vLLM reports them) and the `params.logprobs` most likely (token, logprob) pairs.

    logits: (B, V) when each row emitted one token, or (B, T, V) with row b's tokens at positions 0..len-1."""
    for i, (seq, tokens) in enumerate(zip(seqs, emitted, strict=True)):
        n = seq.params.logprobs
        if n is None or not tokens:
            continue
        rows = logits[i] if logits.dim() == 3 else logits[i : i + 1]
        lp = torch.log_softmax(rows[: len(tokens)].float(), dim=-1)
        chosen = lp.gather(1, torch.tensor(tokens, device=lp.device)[:, None]).squeeze(1).tolist()
        if n:
            tops = [top_logprobs(row, n) for row in lp]
        else:
            tops = [[] for _ in tokens]
        seq.logprobs.extend(zip(chosen, tops, strict=True))
