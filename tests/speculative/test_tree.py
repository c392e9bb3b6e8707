"""Token trees: the trie, its attention mask, greedy verification, K/V compaction, and tree SD = AR exactly."""

from __future__ import annotations

import pytest
import torch

from paperclub.engine.decoder import ARDecoder
from paperclub.engine.kv_cache import KVCache
from paperclub.engine.runner import ModelRunner
from paperclub.engine.sampling import SamplingParams
from paperclub.engine.sequence import Sequence
from paperclub.errors import UserError
from paperclub.models.config import ModelConfig
from paperclub.speculative.ngram import NgramConfig, NgramProposer
from paperclub.speculative.sd import DraftProposer, SpeculativeDecoder
from paperclub.speculative.tree import build_tree, compact, tree_meta, verify_greedy_tree
from paperclub.speculative.tree_proposer import TreeConfig, TreeProposer
from tests.speculative.test_sd import PROMPTS, run

pytest.importorskip("transformers")


def test_chains_merge_into_a_trie():
    tree = build_tree([([5, 6, 7], "ngram"), ([5, 6, 8], "draft"), ([9, 6], "draft"), ([5, 6, 7], "draft")])
    assert tree.tokens == [5, 6, 7, 8, 9, 6]
    assert tree.parents == [-1, 0, 1, 1, -1, 4]
    assert tree.depths == [1, 2, 3, 3, 1, 2]
    assert tree.sources == ["ngram", "ngram", "ngram", "draft", "draft", "draft"]
    assert tree.path(3) == [0, 1, 3] and tree.depth == 3


def test_tree_mask_positions_and_write_indices():
    tree = build_tree([([5, 6], "x"), ([7], "x")])  # nodes: 0 = 5, 1 = 6 (under 0), 2 = 7
    small = build_tree([([4], "x")])
    tokens, positions, meta = tree_meta([tree, small], [1, 2], [3, 0], [0, 1], "cpu")
    assert tokens.tolist() == [[1, 5, 6, 7], [2, 4, 0, 0]]
    assert positions.tolist() == [[3, 4, 5, 4], [0, 1, 0, 0]]  # start + depth; padding at depth 0
    assert meta.write_index.tolist() == [[3, 4, 5, 6], [0, 1, 2, 3]]
    assert meta.kv_len == 7
    m = meta.mask[:, 0].int().tolist()
    assert m[0] == [[1, 1, 1, 1, 0, 0, 0],  # root: prefix + itself
                    [1, 1, 1, 1, 1, 0, 0],  # 5: + root
                    [1, 1, 1, 1, 1, 1, 0],  # 6: + root, 5
                    [1, 1, 1, 1, 0, 0, 1]]  # 7: root + itself, not 5 or 6
    assert m[1] == [[1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0],
                    [0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0]]  # padding sees itself only


def test_greedy_verification_follows_the_targets_argmax():
    tree = build_tree([([5, 6, 7], "x"), ([5, 8], "x"), ([9], "x")])  # nodes 5, 6, 7, 8 (under 5), 9
    V = 12

    def logits_with(argmax):
        out = torch.zeros(1, 1 + len(tree), V)
        out[0, torch.arange(len(argmax)), torch.tensor(argmax)] = 1.0
        return out

    # root -> 5, node 5 -> 8 (the second branch), node 8 -> 3 (no such child): accept [5, 8], emit 3
    v = verify_greedy_tree([tree], logits_with([5, 8, 0, 0, 3, 0]))
    assert v.paths == [[0, 3]] and v.next_token == [3]
    assert v.emitted([tree]) == [[5, 8, 3]]
    v = verify_greedy_tree([tree], logits_with([2, 0, 0, 0, 0, 0]))  # nothing matches the root's argmax
    assert v.paths == [[]] and v.emitted([tree]) == [[2]]
    v = verify_greedy_tree([tree], logits_with([5, 6, 7, 11, 0, 0]))  # the whole first chain, then a bonus
    assert v.emitted([tree]) == [[5, 6, 7, 11]]


def test_compaction_moves_the_accepted_path_into_place():
    cfg = ModelConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=2, num_heads=2, num_kv_heads=1,
                      head_dim=4, max_position_embeddings=64)
    cache = KVCache(cfg, "cpu", torch.float32, 64)
    cache.ensure(2, 16)
    for layer in cache.k + cache.v:
        layer.copy_(torch.arange(layer.shape[2], dtype=torch.float32)[None, None, :, None].expand_as(layer))
    compact(cache, 1, 4, [1, 4, 6])  # nodes at 6, 9, 11 -> 5, 6, 7
    for layer in cache.k + cache.v:
        assert layer[1, 0, :, 0].tolist()[:9] == [0, 1, 2, 3, 4, 6, 9, 11, 8]
        assert layer[0, 0, :16, 0].tolist() == list(range(16))  # other slots untouched


def test_ngram_lookup_many_gives_distinct_continuations_most_recent_first():
    p = NgramProposer(3, 97, NgramConfig(1, 2))
    s = Sequence([1, 2, 7, 7, 1, 2, 8, 8, 1, 2, 7, 7, 3, 2], SamplingParams())
    p.prefill([s])
    found = p.lookup_many(p.sync(s), 4)
    # suffix (3, 2) never occurred before; 2 did, followed by 7 7 3 (latest), 8 8 1, 7 7 1
    assert found == [(1, [7, 7, 3]), (1, [8, 8, 1]), (1, [7, 7, 1])]
    assert p.lookup_many(p.sync(s), 1) == [(1, [7, 7, 3])]


def tree_sd(target, draft, k, config, ngram=True):
    proposer = TreeProposer(k, NgramProposer(k, target.cfg.vocab_size) if ngram else None,
                            DraftProposer(ModelRunner(draft, 256), k) if draft is not None else None, config)
    return SpeculativeDecoder(ModelRunner(target, 256), proposer, k=k)


@pytest.mark.parametrize("config, with_draft, ngram", [
    (TreeConfig(3, 4), True, True),  # the default shape
    (TreeConfig(0, 3), True, False),  # draft branches only
    (TreeConfig(2, 0), False, True),  # n-gram matches only
    (TreeConfig(3, 2, draft_below_match=2), True, True),  # the draft only where the n-gram match is short
    (TreeConfig(1, 3, draft_depth=None, draft_below_match=9), True, True),  # full-depth draft branches, always
])
@pytest.mark.parametrize("batch", [1, 8])
def test_greedy_tree_sd_is_token_identical_to_ar(models, config, with_draft, ngram, batch):
    target, draft = models
    params = SamplingParams(max_tokens=24)
    ar = run(ARDecoder(ModelRunner(target, 256)), PROMPTS, params, max_num_seqs=batch)
    spec = run(tree_sd(target, draft if with_draft else None, 4, config, ngram), PROMPTS, params,
               max_num_seqs=batch)
    for a, b in zip(ar, spec, strict=True):
        assert a.output_ids == b.output_ids
    stats = {key: sum(s.stats.get(key, 0) for s in spec)
             for key in ("num_drafts", "num_draft_tokens", "num_accepted_tokens", "num_tree_nodes")}
    assert 0 < stats["num_accepted_tokens"] < stats["num_draft_tokens"]  # both outcomes happen
    assert stats["num_tree_nodes"] >= stats["num_draft_tokens"]
    if config.draft_width > 1:  # several branches per round: more nodes than one chain's
        assert stats["num_tree_nodes"] > stats["num_draft_tokens"]


def test_a_tree_accepts_at_least_what_its_best_chain_accepts(models):
    """The tree holds the chain's guess (the draft's first branch), so it never accepts fewer tokens in all."""
    target, draft = models
    params = SamplingParams(max_tokens=32)
    chain = run(SpeculativeDecoder(ModelRunner(target, 256), DraftProposer(ModelRunner(draft, 256), 4), k=4),
                PROMPTS, params)
    tree = run(tree_sd(target, draft, 4, TreeConfig(0, 4, draft_depth=None), ngram=False), PROMPTS, params)
    rounds = sum(s.stats["num_drafts"] for s in chain), sum(s.stats["num_drafts"] for s in tree)
    assert rounds[1] < rounds[0], rounds  # fewer target forwards for the same tokens


def test_a_long_ngram_match_is_verified_alone_and_a_short_one_with_the_draft(models):
    target, draft = models
    config = TreeConfig(3, 2, draft_depth=2, ngram_alone_at=3)
    proposer = TreeProposer(4, NgramProposer(4, target.cfg.vocab_size), DraftProposer(ModelRunner(draft, 256), 4),
                            config)
    runner = ModelRunner(target, 256)
    long_match = Sequence([1, 2, 3, 9, 8, 5, 1, 2, 6, 7, 1, 2], SamplingParams())  # + 3: (1, 2, 3) seen before
    short_match = Sequence([1, 2, 3, 9, 8, 5, 4, 2, 6, 7, 1, 2], SamplingParams())  # + 6: only (2, 6) and (6,)
    for s in (long_match, short_match):
        s.slot = runner.cache.allocate()
    proposer.prefill([long_match, short_match])
    long_match.output_ids.append(3)  # the token the prefill emitted
    short_match.output_ids.append(6)
    proposer.reserve(64)
    alone, mixed = proposer.propose_tree([long_match, short_match])
    assert alone.tokens == [9, 8, 5, 1] and not alone.drafted  # the 3-gram's continuation, nothing else
    assert mixed.drafted and set(mixed.sources) == {"ngram", "draft"}
    assert len(mixed) > 4  # n-gram guesses after (2, 6) and two 2-token draft branches


def test_sampled_requests_keep_chains_and_are_reproducible(models):
    target, draft = models
    params = SamplingParams(max_tokens=16, temperature=0.9, seed=3)
    alone = run(tree_sd(target, draft, 3, TreeConfig()), PROMPTS[:1], params)[0]
    mixed = run(tree_sd(target, draft, 3, TreeConfig()), PROMPTS[:1] + PROMPTS[1:3], params)[0]
    assert alone.output_ids == mixed.output_ids
    assert "num_tree_nodes" not in alone.stats  # chain rounds


@pytest.mark.parametrize("kwargs, message", [
    ({"ngram_candidates": -1}, "tree sizes must be >= 0"),
    ({"ngram_candidates": 0, "draft_width": 0}, "at least one n-gram candidate or one draft branch"),
])
def test_bad_tree_configs_are_refused(kwargs, message):
    with pytest.raises(UserError, match=message):
        TreeConfig(**kwargs)


def test_trees_deeper_than_the_attention_float32_tail_are_refused():
    """A tree node's gaps must lie in its last 32 keys (the CPU attention's float32 tail) for its verification to
    round exactly like decoding its path: K above 32 is refused, 32 is accepted."""
    ngram = NgramProposer(32, 100, NgramConfig())
    TreeProposer(32, ngram, None, TreeConfig())
    with pytest.raises(UserError, match="at most 32 tokens deep"):
        TreeProposer(33, NgramProposer(33, 100, NgramConfig()), None, TreeConfig())


def test_llm_with_token_trees_on_the_default_model(default_model_dir):
    """The wiring (LLM(tree=...) with n-gram guesses and the shipped draft) on the real model: token-identical to
    AR, fewer target forwards than tokens, and the tree counters reported."""
    from paperclub.engine import LLM

    prompts = [[{"role": "user", "content": "List the planets of the solar system, one per line."}],
               "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"]
    params = SamplingParams(max_tokens=48, ignore_eos=True)
    ar = LLM(model=str(default_model_dir), mode="ar", dtype="bfloat16")
    tree = LLM(model=str(default_model_dir), mode="sd", draft="ngram+default", k=5, dtype="bfloat16",
               tree=TreeConfig())
    for prompt in prompts:
        (a,), (b,) = ar.generate([prompt], params), tree.generate([prompt], params)
        assert a.token_ids == b.token_ids
        stats = tree.last_stats
        assert stats["mean_acceptance_length"] > 1.3, stats  # 1.47 and 2.72 when written
        assert stats["mean_tree_nodes"] > 5 and stats["num_tree_draft_rounds"] <= stats["num_drafts"], stats
    with pytest.raises(UserError, match="token trees"):
        LLM(model=str(default_model_dir), mode="ssd", tree=TreeConfig())


@pytest.mark.parametrize("argv, message", [
    (["--tree-width", "2"], "--tree-ngram and --tree-width shape a token tree: add --tree"),
    (["--tree", "--tree-ngram", "-1"], "--tree-ngram must be >= 0"),
])
def test_cli_bad_tree_options_are_one_line_exit_2(capsys, tmp_path, argv, message):
    from paperclub.cli import main

    assert main(["generate", "--model", str(tmp_path / "no-model"), "--mode", "sd", *argv, "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
