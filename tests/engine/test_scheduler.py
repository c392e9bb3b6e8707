"""The engine loop: continuous batching, stop conditions, per-request sampling state."""

from __future__ import annotations

import pytest
import torch

from paperclub.engine.decoder import ARDecoder
from paperclub.engine.runner import ModelRunner
from paperclub.engine.sampling import SamplingParams
from paperclub.engine.scheduler import Engine, EngineConfig
from paperclub.errors import UserError
from tests.conftest import kernel_sized_model, make_pair

pytest.importorskip("transformers")


def greedy_reference(hf, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def run_all(engine: Engine, seqs):
    steps = 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
    return steps


@pytest.fixture(scope="module")
def pair():
    return make_pair("smollm2-tied")


def make_engine(model, max_num_seqs=16, eos=()):
    return Engine(ARDecoder(ModelRunner(model, 256)), eos_token_ids=eos, config=EngineConfig(max_num_seqs=max_num_seqs))


def test_continuous_batching_greedy_matches_reference(pair):
    hf, model, _ = pair
    engine = make_engine(model, max_num_seqs=2)
    prompts = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16], [20]]
    lengths = [3, 9, 6, 4]
    seqs = [engine.add_request(p, SamplingParams(max_tokens=n)) for p, n in zip(prompts, lengths, strict=True)]
    run_all(engine, seqs)
    for p, n, s in zip(prompts, lengths, seqs, strict=True):
        assert s.finish_reason == "length"
        assert s.output_ids == greedy_reference(hf, p, n)
    assert engine.decoder.runner.cache.free_slots == engine.decoder.runner.cache.num_slots


def test_requests_join_between_steps(pair):
    hf, model, _ = pair
    engine = make_engine(model)
    a = engine.add_request([3, 1, 4], SamplingParams(max_tokens=8))
    engine.step()
    engine.step()
    b = engine.add_request([2, 7, 1, 8], SamplingParams(max_tokens=5))
    run_all(engine, [a, b])
    assert a.output_ids == greedy_reference(hf, [3, 1, 4], 8)
    assert b.output_ids == greedy_reference(hf, [2, 7, 1, 8], 5)


def test_a_joining_request_is_prefilled_in_the_running_sequences_step(monkeypatch):
    """With the compiled CPU kernels a new prompt and the running sequences' next tokens share one forward, even
    where the prompt's length added to a running row's context would pass the cache's capacity (256 here)."""
    model = kernel_sized_model()
    prompt_a, prompt_b = [(5 * i) % 90 + 1 for i in range(150)], [(7 * i) % 90 + 2 for i in range(150)]

    def alone(prompt, n):
        engine = make_engine(model)
        s = engine.add_request(prompt, SamplingParams(max_tokens=n))
        run_all(engine, [s])
        return s.output_ids

    engine = make_engine(model)
    a = engine.add_request(prompt_a, SamplingParams(max_tokens=40))
    for _ in range(10):
        engine.step()
    if not engine.decoder.mixes_prefill():
        pytest.skip("no compiled CPU kernels on this machine: new prompts are prefilled in a step of their own")
    b = engine.add_request(prompt_b, SamplingParams(max_tokens=20))
    runner, calls = engine.decoder.runner, []
    append = runner.append
    monkeypatch.setattr(runner, "append", lambda *args: calls.append(args) or append(*args))
    assert engine.step() == [b, a]  # one step gave both a token, from one forward
    assert len(calls) == 1 and calls[0][2] == [prompt_b, [a.output_ids[-2]]]
    run_all(engine, [a, b])
    assert a.output_ids == alone(prompt_a, 40) and b.output_ids == alone(prompt_b, 20)


def test_stop_token_and_eos(pair):
    hf, model, _ = pair
    ref = greedy_reference(hf, [5, 6, 7], 10)
    engine = make_engine(model, eos={ref[4]})
    s = engine.add_request([5, 6, 7], SamplingParams(max_tokens=10))
    t = engine.add_request([5, 6, 7], SamplingParams(max_tokens=10, ignore_eos=True, stop_token_ids=[ref[6]]))
    run_all(engine, [s, t])
    first = ref.index(ref[4])
    assert s.output_ids == ref[: first + 1] and s.finish_reason == "stop"
    assert t.output_ids == ref[: ref.index(ref[6]) + 1] and t.finish_reason == "stop"


def test_seeded_sampling_is_independent_of_batch_mates(pair):
    _, model, _ = pair
    params = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=1234)
    alone = make_engine(model)
    s = alone.add_request([4, 5, 6], params)
    run_all(alone, [s])
    crowd = make_engine(model)
    others = [crowd.add_request([9, 9], SamplingParams(max_tokens=7, temperature=0.8, seed=i)) for i in range(3)]
    t = crowd.add_request([4, 5, 6], params)
    run_all(crowd, others + [t])
    assert s.output_ids == t.output_ids
    u = make_engine(model).add_request([4, 5, 6], SamplingParams(max_tokens=12, temperature=1.0, seed=99))
    assert u is not None


def test_prompt_longer_than_context_is_refused(pair):
    _, model, _ = pair
    engine = make_engine(model)
    with pytest.raises(UserError, match="context window"):
        engine.add_request([i % 97 for i in range(300)], SamplingParams())
    with pytest.raises(UserError, match=r"token ids must be in \[0, 97\)"):
        engine.add_request([5, 97], SamplingParams())
    with pytest.raises(UserError, match="empty"):
        engine.add_request([], SamplingParams())


def test_generation_stops_at_the_context_limit(pair):
    _, model, _ = pair
    engine = make_engine(model)
    s = engine.add_request([i % 97 for i in range(240)], SamplingParams(max_tokens=100))
    run_all(engine, [s])
    assert s.finish_reason == "context" and s.length <= 256 and len(s.output_ids) < 100


def test_length_groups_bound_padding_and_cover_every_row():
    from paperclub.engine.runner import length_groups

    lengths = [321, 38, 37, 115, 51, 150, 85, 37, 44, 44, 53, 44, 42, 38, 50, 125]
    groups = length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        padded, real = len(g) * max(lengths[i] for i in g), sum(lengths[i] for i in g)
        assert padded <= 1.25 * real
    assert sum(len(g) * max(lengths[i] for i in g) for g in groups) < 0.4 * len(lengths) * max(lengths)
    assert length_groups([7, 7, 7]) == [[0, 1, 2]]  # equal rows (decode, verification): one forward


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_uneven_batched_prefill_equals_one_prompt_at_a_time(pair, dtype):
    """Prompts of very different lengths are prefilled together (packed without padding by the compiled CPU
    kernels, in length groups by torch's ops); the logits equal those of each prompt alone (bit for bit with the
    batch-invariant CPU kernels)."""
    _, model, _ = pair
    model = model.to(dtype)
    try:
        lengths = [40, 3, 5, 33, 4]
        chunks = [[(7 * i + 3 * j) % 90 + 1 for j in range(n)] for i, n in enumerate(lengths)]
        batched = ModelRunner(model, 64)
        batched.reserve(len(chunks), 64)
        together = batched.append(list(range(len(chunks))), [0] * len(chunks), chunks, True)
        alone = []
        for c in chunks:
            runner = ModelRunner(model, 64)
            runner.reserve(1, 64)
            alone.append(runner.append([0], [0], [c], True))
        alone = torch.cat(alone)
        if model.layers[0]._fused(torch.zeros(1, dtype=dtype), batched.cache.k[0]):
            assert torch.equal(together, alone)
        else:  # torch's own ops (another CPU): not batch-invariant, close only
            torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
    finally:
        model.float()


def test_the_kv_cache_grows_with_the_sequences_and_keeps_what_it_holds(pair, monkeypatch):
    """A request asking for many tokens reserves only RESERVE_AHEAD positions past its length; the cache then
    doubles as the sequences grow, and the tokens are those of a run that reserved everything up front."""
    import paperclub.engine.scheduler as scheduler

    _, model, _ = pair
    params = SamplingParams(max_tokens=150, ignore_eos=True)
    prompts = [[1, 2, 3], [5] * 20]
    upfront = Engine(ARDecoder(ModelRunner(model, 256)))
    want = [upfront.add_request(p, params) for p in prompts]
    while upfront.has_unfinished():
        upfront.step()
    monkeypatch.setattr(scheduler, "RESERVE_AHEAD", 8)
    engine = Engine(ARDecoder(ModelRunner(model, 256)))
    seqs = [engine.add_request(p, params) for p in prompts]
    engine.step()
    cache = engine.decoder.runner.cache
    capacities = [cache.capacity]
    while engine.has_unfinished():
        engine.step()
        capacities.append(cache.capacity)
    assert capacities[0] == 64 and max(capacities) == 256  # grew (64 -> 128 -> 256) instead of starting at 256
    assert sorted(set(capacities)) == [64, 128, 256]
    assert [s.output_ids for s in seqs] == [w.output_ids for w in want]


def test_an_idle_engine_gives_its_kv_cache_back(pair):
    _, model, _ = pair
    engine = make_engine(model, max_num_seqs=4)
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    first = [engine.add_request([1, 2, 3 + i], params) for i in range(4)]
    engine.step()
    engine.release_memory()  # busy: nothing is freed
    assert engine.decoder.runner.cache.num_slots >= 4
    run_all(engine, first)
    engine.release_memory()
    cache = engine.decoder.runner.cache
    assert (cache.num_slots, cache.capacity, cache.nbytes()) == (0, 0, 0)
    again = [engine.add_request([1, 2, 3 + i], params) for i in range(4)]
    run_all(engine, again)
    assert [s.output_ids for s in again] == [s.output_ids for s in first]
