"""Synchronous speculative decoding: token-identical to AR when greedy, distribution-exact when sampling."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from paperclub.engine.decoder import ARDecoder
from paperclub.engine.runner import ModelRunner
from paperclub.engine.sampling import SamplingParams, filtered_probs
from paperclub.engine.scheduler import Engine, EngineConfig
from paperclub.speculative.sd import SpeculativeDecoder

pytest.importorskip("transformers")


def run(decoder, prompts, params, max_num_seqs=16):
    engine = Engine(decoder, config=EngineConfig(max_num_seqs=max_num_seqs))
    seqs = [engine.add_request(p, params) for p in prompts]
    while engine.has_unfinished():
        engine.step()
    return seqs


def sd(target, draft, k):
    return SpeculativeDecoder(ModelRunner(target, 256), ModelRunner(draft, 256), k=k)


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15], [20, 21, 22, 23, 24], [30, 31], [40] * 9, [50]]


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("batch", [1, 8])
def test_greedy_sd_is_token_identical_to_ar(models, k, batch):
    target, draft = models
    params = SamplingParams(max_tokens=20)
    ar = run(ARDecoder(ModelRunner(target, 256)), PROMPTS, params, max_num_seqs=batch)
    spec = run(sd(target, draft, k), PROMPTS, params, max_num_seqs=batch)
    for a, b in zip(ar, spec, strict=True):
        assert a.output_ids == b.output_ids
    accepted = sum(s.stats["num_accepted_tokens"] for s in spec)
    assert 0 < accepted < sum(s.stats["num_draft_tokens"] for s in spec)  # the test exercises both outcomes


def test_identical_draft_accepts_everything(models):
    target, _ = models
    (s,) = run(sd(target, target, 4), [[1, 2, 3]], SamplingParams(max_tokens=21))
    # 4 rounds of 4 drafts + bonus = 20 tokens after the first
    assert s.stats["num_accepted_tokens"] == s.stats["num_draft_tokens"]
    assert s.stats["num_drafts"] == 4 and s.stats["num_accepted_tokens_per_pos"] == [4, 4, 4, 4]


def exact_marginals(target, prompt, params):
    """Exact distributions of the 2nd and 3rd sampled tokens under the filtered target (tiny vocab)."""
    V = target.cfg.vocab_size
    runner = ModelRunner(target, 256)

    def dist(prefixes):
        runner.reserve(len(prefixes), 16)
        logits = runner.append(list(range(len(prefixes))), [0] * len(prefixes), prefixes, True)
        return filtered_probs(logits, [params] * len(prefixes)).double()

    p1 = dist([prompt])[0]
    p2_given = dist([prompt + [a] for a in range(V)])  # (V, V)
    p12 = p1[:, None] * p2_given
    p3 = torch.zeros(V, dtype=torch.float64)
    for a in range(V):  # marginal of the 3rd token: sum over the first two
        p3 += (p12[a][:, None] * dist([prompt + [a, b] for b in range(V)])).sum(0)
    return p12.sum(0), p3


@pytest.mark.parametrize("mode", ["ar", "sd"])
def test_sampled_tokens_follow_the_target_distribution(models, mode):
    """Chi-square goodness of fit of the 2nd and 3rd tokens of 3000 seeded generations against the exact
    marginals of the filtered target; fixed seeds make the test deterministic. Threshold p > 1e-4."""
    target, draft = models
    params = [SamplingParams(max_tokens=3, temperature=0.6, top_k=40, seed=1000 + i) for i in range(3000)]
    prompt = [7, 3, 9]
    p2, p3 = exact_marginals(target, prompt, params[0])
    decoder = ARDecoder(ModelRunner(target, 256)) if mode == "ar" else sd(target, draft, 2)
    engine = Engine(decoder, config=EngineConfig(max_num_seqs=256))
    seqs = [engine.add_request(prompt, p) for p in params]
    while engine.has_unfinished():
        engine.step()
    assert_follow_marginals(seqs, p2, p3)


def assert_follow_marginals(seqs, p2, p3) -> None:
    """Chi-square goodness of fit (p > 1e-4) of the sequences' 2nd and 3rd tokens against exact marginals, rare
    cells pooled as the approximation requires; a token of probability 0 must never appear."""
    for pos, exact in ((1, p2), (2, p3)):
        counts = torch.bincount(torch.tensor([s.output_ids[pos] for s in seqs]), minlength=exact.numel()).double()
        keep = exact * len(seqs) >= 5
        obs = torch.cat([counts[keep], counts[~keep].sum()[None]])
        exp = torch.cat([exact[keep], exact[~keep].sum()[None]])
        exp = exp / exp.sum() * obs.sum()
        assert counts[exact == 0].sum() == 0
        assert chisquare(obs.numpy(), exp.numpy()).pvalue > 1e-4, f"token {pos + 1} is off the target distribution"
