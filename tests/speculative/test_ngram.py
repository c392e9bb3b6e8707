"""Prompt-lookup (n-gram) drafting: what it proposes, and SD with it is exactly the target's decoding."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from paperclub.engine.decoder import ARDecoder
from paperclub.engine.runner import ModelRunner
from paperclub.engine.sampling import SamplingParams
from paperclub.engine.scheduler import Engine, EngineConfig
from paperclub.engine.sequence import Sequence
from paperclub.errors import UserError
from paperclub.speculative.ngram import CombinedProposer, NgramConfig, NgramProposer, parse_draft
from paperclub.speculative.sd import DraftProposer, SpeculativeDecoder
from tests.speculative.test_sd import exact_marginals, run

pytest.importorskip("transformers")

V = 97


def proposal(prompt, output=(), k=4, **config):
    p = NgramProposer(k, V, NgramConfig(**config))
    s = Sequence(list(prompt), SamplingParams())
    p.prefill([s])
    s.output_ids += list(output)
    return p.propose([s])


def row(prop):
    return prop.tokens[0].tolist() if prop.drafted[0] else None


def test_proposes_what_followed_the_most_recent_match():
    # (1, 2, 3) occurs twice before the suffix: the later occurrence (followed by 7, 5, 1, 2) wins over 9
    assert row(proposal([1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3])) == [7, 5, 1, 2]


def test_the_longest_matching_ngram_wins():
    tokens = [4, 2, 8, 6, 2, 9, 4, 2]  # (4, 2) -> 8, 6; the 1-gram (2) alone would give 9, 4
    assert row(proposal(tokens, k=2)) == [8, 6]
    assert row(proposal(tokens, k=2, prompt_lookup_max=1)) == [9, 4]


def test_a_short_loop_is_continued_for_all_k_tokens():
    assert row(proposal([5, 6, 5, 6], k=5)) == [5, 6, 5, 6, 5]


def test_generated_tokens_are_indexed():
    # the suffix (1, 2) exists only once output is appended; its match sits in the prompt, then runs on
    assert row(proposal([1, 2, 3], output=[1, 2])) == [3, 1, 2, 3]


def test_no_match_proposes_nothing():
    assert row(proposal([1, 2, 3])) is None
    assert row(proposal([1, 2, 3, 4, 2], prompt_lookup_min=2)) is None  # only a 1-gram (2) matches
    assert row(proposal([1, 2, 3, 4, 2], prompt_lookup_min=1)) == [3, 4, 2, 3]


def test_sampled_rows_get_a_one_hot_q():
    p = NgramProposer(3, V)
    s = Sequence([1, 2, 3, 1, 2], SamplingParams(temperature=0.7, seed=1))
    p.prefill([s])
    prop = p.propose([s])
    assert prop.q is not None and prop.q.shape == (1, 3, V)
    assert torch.equal(prop.q.argmax(-1), prop.tokens) and torch.all(prop.q.sum(-1) == 1)


@pytest.mark.parametrize("config, message", [
    (dict(prompt_lookup_min=0), "prompt_lookup_min must be >= 1"),
    (dict(prompt_lookup_min=3, prompt_lookup_max=2), "prompt_lookup_max (2) must be >= prompt_lookup_min (3)"),
])
def test_bad_ngram_sizes_are_refused(config, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        NgramConfig(**config)


def test_draft_specs():
    assert parse_draft("ngram") == parse_draft("ngram")
    assert parse_draft("ngram").ngram and not parse_draft("ngram").uses_model
    both = parse_draft("ngram+/some/draft")
    assert both.ngram and both.model == "/some/draft"
    assert parse_draft("ngram+default").default_model and parse_draft("ngram+default").model is None
    assert not parse_draft("./ngram").ngram  # a directory named ngram
    with pytest.raises(UserError, match="ngram\\+ needs a draft model"):
        parse_draft("ngram+")


# -- the decoder -------------------------------------------------------------------------------------------


# repeats, so that n-grams match; the last one has no repeat in its prompt
PROMPTS = [[1, 2, 3, 1, 2], [4, 5, 6, 7, 4, 5, 6, 7, 4], [11, 12, 11], [20, 21, 22, 23, 24] * 3, [30, 31],
           [40] * 9, [50, 51, 52, 53, 50, 51], [60, 61, 62, 63]]


def ngram_sd(target, k, draft=None, **config):
    proposer = NgramProposer(k, V, NgramConfig(**config))
    if draft is not None:
        proposer = CombinedProposer(proposer, DraftProposer(ModelRunner(draft, 256), k))
    return SpeculativeDecoder(ModelRunner(target, 256), proposer, k=k)


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("combined", [False, True])
def test_greedy_ngram_sd_is_token_identical_to_ar(models, k, batch, combined):
    target, draft = models
    params = SamplingParams(max_tokens=24)
    ar = run(ARDecoder(ModelRunner(target, 256)), PROMPTS, params, max_num_seqs=batch)
    spec = run(ngram_sd(target, k, draft if combined else None), PROMPTS, params, max_num_seqs=batch)
    for a, b in zip(ar, spec, strict=True):
        assert a.output_ids == b.output_ids
    stats = {key: sum(s.stats.get(key, 0) for s in spec)
             for key in ("num_drafts", "num_draft_tokens", "num_accepted_tokens", "num_ngram_drafts")}
    assert 0 < stats["num_accepted_tokens"] < stats["num_draft_tokens"]  # both outcomes happen
    assert 0 < stats["num_ngram_drafts"] < stats["num_drafts"]  # matched and unmatched rounds happen
    if combined:  # unmatched rounds go to the model draft: every round proposes K tokens
        assert stats["num_draft_tokens"] == k * stats["num_drafts"]
    else:  # unmatched rounds propose nothing and are counted as 0-token drafts
        assert stats["num_draft_tokens"] == k * stats["num_ngram_drafts"]


def test_a_repeating_target_is_accepted_in_full(models):
    """A target that loops: once the loop is in the context, every n-gram proposal is accepted."""
    target, _ = models
    params = SamplingParams(max_tokens=64)
    (ar,) = run(ARDecoder(ModelRunner(target, 256)), [[40] * 9], params)
    out = ar.output_ids
    period = next(p for p in range(1, 32) if out[-p:] == out[-2 * p:-p])  # the tiny model's greedy loop
    prompt = [40] * 9 + out[:-period]  # the loop is already in the prompt
    (s,) = run(ngram_sd(target, 4), [prompt], SamplingParams(max_tokens=20))
    assert s.stats["num_accepted_tokens"] == s.stats["num_draft_tokens"] > 0


@pytest.mark.parametrize("combined", [False, True])
def test_sampled_tokens_follow_the_target_distribution(models, combined):
    """As test_sd's chi-square test: the 2nd and 3rd tokens of 3000 seeded generations against the exact
    marginals. The prompt holds every even id once, so an even token has a 1-gram match and an odd one none:
    both the one-hot-q verification and the undrafted AR step (or the model draft) run."""
    target, draft = models
    params = [SamplingParams(max_tokens=3, temperature=0.8, seed=1000 + i) for i in range(3000)]
    prompt = list(range(0, V, 2))
    p2, p3 = exact_marginals(target, prompt, params[0])
    engine = Engine(ngram_sd(target, 2, draft if combined else None), config=EngineConfig(max_num_seqs=256))
    seqs = [engine.add_request(prompt, p) for p in params]
    while engine.has_unfinished():
        engine.step()
    ngram_rounds = sum(s.stats.get("num_ngram_drafts", 0) for s in seqs)
    assert 0 < ngram_rounds < sum(s.stats["num_drafts"] for s in seqs)
    for pos, exact in ((1, p2), (2, p3)):
        counts = torch.bincount(torch.tensor([s.output_ids[pos] for s in seqs]), minlength=exact.numel()).double()
        keep = exact * len(seqs) >= 5  # pool rare cells (only where there are any: 0/0 is nan)
        obs = torch.cat([counts[keep], counts[~keep].sum()[None]]) if (~keep).any() else counts[keep]
        exp = torch.cat([exact[keep], exact[~keep].sum()[None]]) if (~keep).any() else exact[keep]
        exp = exp / exp.sum() * obs.sum()
        assert counts[exact == 0].sum() == 0
        assert chisquare(obs.numpy(), exp.numpy()).pvalue > 1e-4, f"token {pos + 1} is off the target distribution"


def test_seeded_ngram_sd_is_reproducible_and_independent_of_batch_mates(models):
    target, _ = models
    params = SamplingParams(max_tokens=16, temperature=0.9, seed=7)
    alone = run(ngram_sd(target, 3), PROMPTS[:1], params)[0].output_ids
    batched = run(ngram_sd(target, 3), PROMPTS, params)[0].output_ids
    assert alone == batched


@pytest.mark.parametrize("argv, message", [
    (["--prompt-lookup-min", "0"], "--prompt-lookup-min must be >= 1"),
    (["--prompt-lookup-min", "3", "--prompt-lookup-max", "2"], "--prompt-lookup-max (2) must be >= --prompt-look"),
    (["--mode", "ssd", "--draft", "ngram"], "n-gram drafting runs with --mode sd"),
    (["--mode", "sd", "--draft", "ngram+"], "ngram+ needs a draft model"),
])
def test_cli_bad_ngram_options_are_one_line_exit_2(capsys, tmp_path, argv, message):
    from paperclub.cli import main

    assert main(["generate", "--model", str(tmp_path / "no-model"), *argv, "hi"]) == 2  # refused before loading
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_llm_with_ngram_drafting_on_the_default_model(default_model_dir):
    """The wiring (LLM(draft="ngram") is SD without a draft model) and the point of it: text that repeats its
    context is accepted several tokens per round, token-identical to AR."""
    from paperclub.engine import LLM

    text = ("The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden fence. " * 6)
    params = SamplingParams(max_tokens=48, ignore_eos=True)
    ar = LLM(model=str(default_model_dir), mode="ar", dtype="float32")
    ng = LLM(model=str(default_model_dir), draft="ngram", k=4, dtype="float32")
    assert (ng.mode, ng.draft_dir, ng.draft_name) == ("sd", None, "ngram")
    (a,), (b,) = ar.generate([text], params), ng.generate([text], params)
    assert a.token_ids == b.token_ids
    assert ng.last_stats["mean_acceptance_length"] > 2.5, ng.last_stats  # 3.1 when written; K = 4
