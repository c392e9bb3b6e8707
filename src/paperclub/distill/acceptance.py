"""How good a draft is: speculative-decoding acceptance simulated exactly from teacher-forced logits, and the
cost of one decode step of a model at batch 1.

Greedy (temperature 0): the outcome of speculative decoding is fully determined. Along the target's own
greedy continuation g_0 .. g_{N-1} (g_0 comes from the prefill), a round starting at output position i
accepts the longest run of positions i, i+1, ... (at most K) where the draft's argmax, fed the target's
tokens, equals g; the target then adds one token (the correction or bonus). We replay these rounds.

Temperature > 0: along a continuation the target samples at that temperature, the probability that the draft
token at a position is accepted is beta = sum_x min(p(x), q(x)) under the filtered (temperature) distributions
p of the target and q of the draft. Rounds are simulated by drawing acceptance with these probabilities
(seeded). This is exact for the first token of each round; for later tokens the draft's context is the
target's sample rather than the accepted draft token (which follows min(p, q) / beta), a standard and small
approximation. `mean_beta` is the per-position expected acceptance.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from paperclub.engine.runner import ModelRunner
from paperclub.engine.sampling import SamplingParams, filtered_probs, make_generator, next_tokens
from paperclub.models.llama import Llama

log = logging.getLogger(__name__)


@dataclass
class AcceptanceReport:
    temperature: float
    k: int
    prompts: int
    generated_tokens: int
    rounds: int
    drafted_tokens: int
    accepted_tokens: int
    acceptance_rate: float  # accepted / drafted draft tokens
    tokens_per_target_forward: float  # mean tokens a verification round yields (accepted + 1)
    mean_position_acceptance: float  # greedy: argmax agreement per position; sampled: mean beta
    draft_vocab_coverage: float  # fraction of the target's generated tokens the draft can produce at all

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def generate_ids(target: Llama, prompts: list[list[int]], max_tokens: int, temperature: float, seed: int,
                 eos_ids: set[int], batch: int = 16) -> list[list[int]]:
    """The target's continuations (plain autoregressive decoding), stopped after an end-of-sequence id."""
    runner = ModelRunner(target, max(len(p) for p in prompts) + max_tokens + 2)
    outs: list[list[int]] = []
    for a in range(0, len(prompts), batch):
        chunk = prompts[a : a + batch]
        params = [SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed + a + i)
                  for i in range(len(chunk))]
        gens = [make_generator(p.seed) for p in params]
        slots = list(range(len(chunk)))
        runner.reserve(len(chunk), max(len(p) for p in chunk) + max_tokens + 1)
        logits = runner.append(slots, [0] * len(chunk), chunk, last_only=True)
        lens = [len(p) for p in chunk]
        seqs: list[list[int]] = [[] for _ in chunk]
        done = [False] * len(chunk)
        for _ in range(max_tokens):
            toks = next_tokens(logits, params, gens).tolist()
            for b, t in enumerate(toks):
                if not done[b]:
                    seqs[b].append(t)
                    done[b] = t in eos_ids
            if all(done):
                break
            logits = runner.append(slots, lens, [[t] for t in toks], last_only=True)
            lens = [n + 1 for n in lens]
        outs += seqs
    return outs


@torch.inference_mode()
def forced_logits(model: Llama, seq: list[int]) -> torch.Tensor:
    """(len(seq), V) float32 logits of `model` fed `seq` (teacher forcing)."""
    runner = ModelRunner(model, len(seq) + 1)
    runner.reserve(1, len(seq) + 1)
    return runner.append([0], [0], [seq], last_only=False)[0]


def evaluate_acceptance(draft: Llama, target: Llama, prompts: list[list[int]], k: int = 5,
                        temperature: float = 0.0, max_tokens: int = 128, seed: int = 0,
                        eos_ids: set[int] | None = None) -> AcceptanceReport:
    """Simulate speculative decoding with `draft` for `target` on tokenized `prompts` (see module docstring)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    eos = set(eos_ids if eos_ids is not None else target.cfg.eos_token_ids)
    conts = generate_ids(target, prompts, max_tokens, temperature, seed, eos)
    params = [SamplingParams(temperature=temperature)]
    rng = random.Random(seed)
    vocab_ok = torch.isfinite(draft.logits(torch.zeros(1, draft.cfg.hidden_size, dtype=draft.dtype,
                                                       device=draft.device)))[0]
    rounds = drafted = accepted = produced = covered = 0
    position_scores: list[float] = []
    for prompt, gen in zip(prompts, conts, strict=True):
        if len(gen) < 2:
            produced += len(gen)
            continue
        seq = prompt + gen
        P, N = len(prompt), len(gen)
        t_logits = forced_logits(target, seq)[P - 1 : P + N - 1]  # row j predicts gen[j]
        d_logits = forced_logits(draft, seq)[P - 1 : P + N - 1]
        gen_t = torch.tensor(gen, device=d_logits.device)
        covered += int(vocab_ok[gen_t].sum())
        if temperature == 0:
            score = (d_logits.argmax(-1) == gen_t).float()
        else:
            p = filtered_probs(t_logits, params * N)
            q = filtered_probs(d_logits, params * N)
            score = torch.minimum(p, q).sum(-1).clamp(0, 1)
        s = score[1:].tolist()  # position 0 comes from the prefill, rounds start at output position 1
        position_scores += s
        i = 0
        while i < len(s):
            cap = min(k, len(s) - i)
            n = 0
            while n < cap and (s[i + n] >= 1.0 if temperature == 0 else rng.random() < s[i + n]):
                n += 1
            rounds += 1
            drafted += cap
            accepted += n
            i += n + 1
        produced += N
    total_steps = sum(max(len(g) - 1, 0) for g in conts)
    return AcceptanceReport(
        temperature=temperature, k=k, prompts=len(prompts), generated_tokens=produced, rounds=rounds,
        drafted_tokens=drafted, accepted_tokens=accepted,
        acceptance_rate=accepted / drafted if drafted else 0.0,
        tokens_per_target_forward=total_steps / rounds if rounds else 0.0,
        mean_position_acceptance=statistics.fmean(position_scores) if position_scores else 0.0,
        draft_vocab_coverage=covered / max(sum(len(g) for g in conts), 1),
    )


@torch.inference_mode()
def step_cost(model: Llama, context: int = 128, steps: int = 40, warmup: int = 5) -> float:
    """Median seconds of one decode step (`ModelRunner.append` of one token, batch 1) after `context` tokens."""
    runner = ModelRunner(model, context + warmup + steps + 2)
    runner.reserve(1, context + warmup + steps + 2)
    runner.append([0], [0], [[1] * context], last_only=True)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        runner.append([0], [context + i], [[1]], last_only=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[warmup:])
