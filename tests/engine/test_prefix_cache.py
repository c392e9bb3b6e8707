"""Automatic prefix caching: cached K/V are the computed ones, hits skip exactly the cached blocks, the memory bound
holds and eviction keeps reused blocks, and generation with the cache equals generation without it."""

from __future__ import annotations

import pytest
import torch

from paperclub.engine.decoder import ARDecoder
from paperclub.engine.kv_cache import KVCache
from paperclub.engine.prefix_cache import PrefixCache
from paperclub.engine.runner import ModelRunner
from paperclub.engine.sampling import SamplingParams
from paperclub.engine.scheduler import Engine, EngineConfig
from tests.conftest import kernel_sized_model, make_pair

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pair():
    return make_pair("smollm2-tied")


def filled_cache(cfg, slots: int = 4, positions: int = 64) -> KVCache:
    """A cache whose K/V entry at (slot, position) holds 1000 * slot + position everywhere, V its negative."""
    cache = KVCache(cfg, "cpu", torch.float32, positions)
    cache.ensure(slots, positions)
    for k, v in zip(cache.k, cache.v, strict=True):
        value = 1000 * torch.arange(slots).view(-1, 1, 1, 1) + torch.arange(positions).view(1, 1, -1, 1)
        k.copy_(value.expand_as(k))
        v.copy_(-value.expand_as(v))
    return cache


def test_load_copies_the_longest_cached_block_prefix_and_leaves_a_token(pair):
    cfg = pair[2]
    cache = filled_cache(cfg)
    pc = PrefixCache(max_bytes=2**30, block_size=4)
    tokens = list(range(100, 111))  # 11 tokens: blocks [0, 4), [4, 8) are full
    pc.store(tokens, cache, slot=1)
    assert pc.num_blocks == 2
    cache.k[0][3].zero_()
    # a prompt that shares 6 tokens: one full block and the first 2 tokens of the next come from the cache
    assert pc.load(tokens[:6] + [7, 7, 7], cache, slot=3) == 6
    assert torch.equal(cache.k[0][3, :, :6], cache.k[0][1, :, :6])
    assert torch.equal(cache.v[1][3, :, :6], cache.v[1][1, :, :6])
    assert cache.k[0][3, 0, 6, 0] == 0  # nothing past the hit was written
    # the same 8 tokens as a whole prompt: the last token must still run
    assert pc.load(tokens[:8], cache, slot=3) == 7
    assert pc.load(tokens[:9], cache, slot=3) == 8
    assert pc.load(tokens[:3], cache, slot=3) == 2  # inside the first block
    assert pc.load([5] + tokens[1:9], cache, slot=3) == 0  # blocks are keyed by their whole prefix
    assert pc.stats.queries == 9 + 8 + 9 + 3 + 9 and pc.stats.hits == 6 + 7 + 8 + 2


def test_memory_bound_and_reused_blocks_are_evicted_last(pair):
    cfg = pair[2]
    cache = filled_cache(cfg)
    block = 2 * cfg.num_layers * cfg.num_kv_heads * 4 * cfg.head_dim * 4  # bytes of one 4-token block, fp32
    pc = PrefixCache(max_bytes=3 * block, block_size=4)
    shared = [1, 2, 3, 4]
    pc.store(shared + [10, 11, 12, 13], cache, slot=0)
    assert pc.load(shared + [9, 9], cache, slot=2) == 4  # the shared block is reused
    pc.store(shared + [20, 21, 22, 23], cache, slot=1)  # 3 blocks: full
    pc.store(shared + [30, 31, 32, 33], cache, slot=1)  # 4 blocks: the oldest unreused leaf goes
    assert pc.nbytes <= 3 * block and pc.num_blocks == 3
    assert pc.load(shared + [10, 11, 12, 13, 0], cache, slot=2) == 4  # [10..13] was evicted
    assert pc.load(shared + [30, 31, 32, 33, 0], cache, slot=2) == 8
    # the reused block never goes while unreused leaves remain, and a parent never goes before its children
    for _ in range(5):
        pc.store(shared + [40 + _] * 4, cache, slot=1)
        assert shared[0] in [k[0] for k in pc.root.children]
    pc.store(list(range(50, 70)), cache, slot=1)  # 5 blocks into room for 3: the chain is cut from its end
    assert pc.num_blocks == 3 and pc.nbytes <= 3 * block
    for node in pc._blocks():
        assert node.parent is pc.root or node.parent in list(pc._blocks())


def test_zero_budget_keeps_nothing(pair):
    cache = filled_cache(pair[2])
    pc = PrefixCache(max_bytes=0, block_size=4)
    pc.store(list(range(20)), cache, slot=0)
    assert pc.num_blocks == 0 and pc.load(list(range(20)), cache, slot=1) == 0


def make_engine(model, prefix_cache_mb: float) -> Engine:
    runner = ModelRunner(model, 256, prefix_cache_mb=prefix_cache_mb)
    return Engine(ARDecoder(runner), config=EngineConfig(max_num_seqs=4))


def generate(engine: Engine, prompts: list[list[int]], n: int) -> list[list[int]]:
    seqs = [engine.add_request(p, SamplingParams(max_tokens=n)) for p in prompts]
    while engine.has_unfinished():
        engine.step()
    return [s.output_ids for s in seqs]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_generation_with_the_cache_equals_generation_without(pair, dtype):
    model = pair[1].to(dtype)
    try:
        system = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]  # 20 tokens
        prompts = [system + [30 + i, 31, 32 + i] * (i + 1) for i in range(5)]
        plain = generate(make_engine(model, 0), prompts, 12)
        engine = make_engine(model, 64)
        pc = engine.decoder.runner.prefix_cache
        first = generate(engine, prompts, 12)
        assert pc.stats.hits == 20  # the fifth prompt waited for a free row and found the 20-token system prompt
        second = generate(engine, prompts, 12)
        assert first == plain and second == plain
        # the second pass found each prompt's tokens as far as the first pass's full blocks reach (a prompt and 11
        # generated tokens have K/V in the cache), all but the prompt's last token at most
        assert pc.stats.hits - 20 == sum(min(len(p) - 1, (len(p) + 11) // 16 * 16) for p in prompts)
        # the next turn of a conversation starts with the first turn and its reply: those blocks are cached too
        before = pc.stats.hits
        turn2 = prompts[0] + first[0] + [40, 41, 42]
        assert generate(engine, [turn2], 12) == generate(make_engine(model, 0), [turn2], 12)
        assert pc.stats.hits - before == (len(prompts[0]) + len(first[0]) - 1) // 16 * 16
    finally:
        pair[1].to(torch.float32)


def test_a_cached_prefill_gives_the_logits_of_a_full_one():
    runner = ModelRunner(kernel_sized_model(), 256, prefix_cache_mb=64)
    runner.reserve(4, 128)
    prompt = list(range(3, 60))
    _, hits, full = runner.prefill([prompt])
    assert hits == [0]
    _, hits, cached = runner.prefill([prompt])  # its first 48 tokens now come from the cache
    assert hits == [48] and runner.prefix_cache.stats.hits == 48
    if not runner.model.runs_fused(runner.cache.k[0]):
        pytest.skip("no compiled CPU kernels on this machine: cached and full prefills agree to rounding only")
    assert torch.equal(cached, full)  # every token row is computed on its own: the same bits
