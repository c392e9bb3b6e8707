"""SSD: the draft process and its speculation cache.

Token-identical to AR when greedy (hits and misses, both fallbacks, continuous batching); exact when sampling
(the rule with drafts pre-sampled before the outcome is known, on hit / jit / fast paths and with Saguaro
scaling; and end to end); a dead or hung draft fails the request quickly and leaves no child process.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
import torch

from paperclub.engine.decoder import ARDecoder
from paperclub.engine.runner import ModelRunner
from paperclub.engine.sampling import SamplingParams, filtered_probs, make_generator, sample_with_uniforms
from paperclub.engine.scheduler import Engine, EngineConfig
from paperclub.errors import UserError
from paperclub.models.draft import load_draft_model
from paperclub.speculative.config import SSDConfig
from paperclub.speculative.draft_worker import DraftWorker
from paperclub.speculative.fanout import AdaptiveFanout
from paperclub.speculative.saguaro import cache_aware
from paperclub.speculative.ssd import SSDDecoder, torch_threads
from paperclub.speculative.verify import verify_sampled
from tests.conftest import save_target_and_draft
from tests.speculative.test_sd import assert_follow_marginals, exact_marginals, run

pytest.importorskip("transformers")

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15], [20, 21, 22, 23, 24], [30, 31], [40] * 9, [50]]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A tiny target and a perturbed copy as draft (agrees often, not always), saved as HF safetensors."""
    _, target, target_dir, draft_dir = save_target_and_draft(tmp_path_factory.mktemp("ssd_models"), "smollm2-tied")
    return target, target_dir, draft_dir


# ---- the draft worker in-process: the cache holds exactly what plain drafting would produce ---------------------

def ar_draft(runner: ModelRunner, prefix: list[int], k: int, params: SamplingParams):
    """K greedy draft tokens after `prefix` and the filtered draft distribution at each step."""
    tokens, dists = [], []
    runner.reserve(1, len(prefix) + k + 1)
    logits = runner.append([0], [0], [prefix], True)
    for i in range(k):
        q = filtered_probs(logits, [params])[0]
        t = int(logits.argmax(-1)) if params.greedy else None
        tokens.append(t)
        dists.append(q)
        if t is not None and i < k - 1:
            logits = runner.append([0], [len(prefix) + i], [[t]], True)
    return tokens, dists


@pytest.mark.parametrize("fanout", ["uniform", "geometric", "adaptive"])
def test_branch_decoding_caches_what_autoregressive_drafting_gives(dirs, fanout):
    """Every cached branch (k, c) must hold the greedy draft continuation of prefix + spec[:k] + c, over two
    rounds (so the glue and the committed length after a hit are exercised), for a batch of sequences."""
    _, target_dir, draft_dir = dirs
    model = load_draft_model(draft_dir, target_dir, "cpu", torch.float32)
    cfg = SSDConfig(k=3, fanout=fanout, fanout_size=2, miss_fanout=3)
    worker = DraftWorker(ModelRunner(model, 512), cfg)
    ref = ModelRunner(model, 512)
    greedy = SamplingParams()
    prompts = {10: [5, 6, 7], 11: [9], 12: [1, 2, 3, 4, 5, 6]}
    seqs = worker.add([{"id": i, "prompt": p, "params": greedy, "seed": 0} for i, p in prompts.items()])
    worker.build(seqs)
    history = {i: list(p) for i, p in prompts.items()}  # the tokens the target has fixed so far
    for _ in range(2):
        for s in seqs:
            outcomes = worker.cache.outcomes(s.seq_id)
            level = worker.fanout.level if worker.fanout else None
            assert len(outcomes) == sum(cfg.fanout_sizes(len(s.pending) - 1, s.after_miss, level))
            for k, c in outcomes:
                spec = worker.cache._entries[s.seq_id][(k, c)]
                prefix = history[s.seq_id] + s.pending[1: k + 1] + [c]
                assert spec.tokens == ar_draft(ref, prefix, cfg.k, greedy)[0], (s.seq_id, k, c)
        # a hit for the first sequence (k = its largest cached k), a miss for the others
        hit = seqs[0]
        k, c = max(worker.cache.outcomes(hit.seq_id))
        uncached = [next(t for t in range(97) if (0, t) not in worker.cache.outcomes(s.seq_id)) for s in seqs[1:]]
        outs = [(hit.seq_id, k, c)] + [(s.seq_id, 0, b) for s, b in zip(seqs[1:], uncached, strict=True)]
        for sid, k_, b in outs:
            history[sid] += worker.seqs[sid].pending[1 : k_ + 1] + [b]
        rows, q = worker.serve(outs, "jit")
        assert [r["hit"] for r in rows] == [True, False, False] and q is None
        for r in rows:
            assert r["tokens"] == ar_draft(ref, history[r["id"]], cfg.k, greedy)[0]
        worker.build(seqs)
        assert worker.cache.hits == worker.cache.misses / 2


def test_sampled_branches_carry_the_distribution_they_were_sampled_from(dirs):
    _, target_dir, draft_dir = dirs
    model = load_draft_model(draft_dir, target_dir, "cpu", torch.float32)
    cfg = SSDConfig(k=2, fanout_size=2, miss_fanout=2, saguaro_c=0.5)
    worker = DraftWorker(ModelRunner(model, 512), cfg)
    ref = ModelRunner(model, 512)
    params = SamplingParams(temperature=0.8, top_k=30)
    (s,) = worker.add([{"id": 1, "prompt": [3, 1, 4, 1, 5], "params": params, "seed": 9}])
    worker.build([s])
    for (_k, c), spec in worker.cache._entries[1].items():
        prefix = [3, 1, 4, 1] + [5] + [c]
        for i in range(cfg.k):
            _, (q,) = ar_draft(ref, prefix + spec.tokens[:i], 1, params)
            expected = cache_aware(q[None], cfg.fanout_size, cfg.saguaro_c)[0]
            assert torch.allclose(spec.q[i], expected, atol=1e-5)
            assert spec.q[i][spec.tokens[i]] > 0


# ---- greedy SSD through the draft process: token-identical to AR ------------------------------------------------

@pytest.mark.parametrize(
    "batch, config",
    [
        (1, SSDConfig(k=3, fallback="jit", fanout="uniform")),
        (4, SSDConfig(k=3, fallback="fast", fanout="geometric", fanout_size=3)),
        (6, SSDConfig(k=2, fallback="auto", auto_jit_max_batch=3)),
        (2, SSDConfig(k=3, fallback="jit", fanout="adaptive")),
    ],
    ids=["batch1-jit-uniform", "batch4-fast-geometric", "batch6-auto", "batch2-jit-adaptive"],
)
def test_greedy_ssd_is_token_identical_to_ar(dirs, batch, config):
    target, _, draft_dir = dirs
    params = SamplingParams(max_tokens=24)
    ar = run(ARDecoder(ModelRunner(target, 256)), PROMPTS, params, max_num_seqs=batch)
    threads = torch.get_num_threads()
    with SSDDecoder(ModelRunner(target, 256), draft_dir, config=config) as decoder:
        ssd = run(decoder, PROMPTS, params, max_num_seqs=batch)
        process = decoder.process
        stats = decoder.stats
    for a, b in zip(ar, ssd, strict=True):
        assert a.output_ids == b.output_ids
    assert stats["hits"] > 0 and stats["misses"] > 0  # both paths ran
    assert 0 < stats["num_accepted_tokens"] < stats["num_draft_tokens"]
    if config.fallback == "auto":  # continuous batching shrinks the batch below the jit threshold at the end
        assert stats["fallback_jit"] > 0 and stats["fallback_fast"] > 0
    else:
        assert stats[f"fallback_{config.fallback}"] == stats["misses"]
    assert sum(s.stats["num_drafts"] for s in ssd) == stats["num_drafts"]
    assert all(0 <= s.stats["cache_hit_rate"] <= 1 for s in ssd)
    for s in ssd:  # acceptance is a prefix: per-position counts never rise with the position, and sum to the total
        per_pos = s.stats["num_accepted_tokens_per_pos"]
        assert per_pos == sorted(per_pos, reverse=True) and sum(per_pos) == s.stats["num_accepted_tokens"]
        assert s.metrics()["mean_acceptance_length"] >= 1
    assert stats["wait_s"] > 0 and stats["hidden_s"] >= 0
    # clean shutdown: the draft exited on its own (exit code 0), no child left
    assert process.exitcode == 0 and not process.is_alive()
    assert torch.get_num_threads() == threads  # the target's SSD thread count stayed inside its steps
    if config.fanout == "adaptive":  # every sequence ran with an F in 1..fanout_size
        assert all(1 <= s.stats["adaptive_fanout"] <= config.fanout_size for s in ssd)


# ---- sampled SSD: the rule with cached drafts is exact ----------------------------------------------------------

DRAWS = 100_000


def random_tables(g: torch.Generator, V: int, sharp: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A random target P and a draft Q that roughly agrees with it: distributions after prefixes of length
    0, 1, 2 (shapes (V,), (V, V), (V, V, V)), i.e. consistent models over a depth-3 tree."""
    logits = [torch.randn(*(V,) * (d + 1), generator=g, dtype=torch.float64) * sharp for d in range(3)]
    noisy = [x + torch.randn(x.shape, generator=g, dtype=torch.float64) * 0.4 for x in logits]
    return [x.softmax(-1) for x in logits], [x.softmax(-1) for x in noisy]


def pick(dist: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One sample per row of (N, V) probabilities."""
    return sample_with_uniforms(dist, torch.rand(dist.shape[0], generator=g, dtype=torch.float64))


def simulate_two_rounds(P, Q, fallback: str, F: int, saguaro_c: float | None, seed: int):
    """DRAWS independent runs of SSD with K = 1 on a random target P and draft Q, vectorised. Round 1 verifies
    d1 ~ q; the cache for round 2 was sampled *before* round 1's outcome (branch drafts for every bonus
    candidate); round 2 uses it on a hit, else the fallback. Returns the first two emitted tokens and hits."""
    g = torch.Generator().manual_seed(seed)
    V = P[0].shape[0]
    N = DRAWS
    scale = (lambda q: cache_aware(q, F, saguaro_c)) if saguaro_c is not None else (lambda q: q)
    q0 = scale(Q[0][None]).expand(N, V)
    d1 = pick(q0, g)
    # the draft's cache for the outcome k = 0 (bonus c != d1), sampled now, before the target verifies
    pre = torch.stack([pick(scale(Q[1][c][None]).expand(N, V), g) for c in range(V)], 1)  # (N, V): branch c
    top = Q[0].topk(F + 1).indices
    cand = torch.zeros(N, V, dtype=torch.bool)
    for c in top.tolist():
        cand[:, c] = True
    cand[torch.arange(N), d1] = False
    over = cand.sum(1) > F  # keep exactly the F best candidates other than d1
    cand[over, top[-1]] = False
    # round 1
    p1 = torch.stack([P[0][None].expand(N, V), P[1][d1]], 1)
    u = torch.rand(N, 2, generator=g, dtype=torch.float64)
    v = verify_sampled(d1[:, None], q0[:, None], p1, u)
    k, b = torch.tensor(v.num_accepted), torch.tensor(v.next_token)
    # round 2 (only its first emitted token matters, and only when k = 0)
    hit = cand[torch.arange(N), b]
    s = torch.where(hit, pre[torch.arange(N), b], pick(scale(Q[1][b]), g))  # jit: drafted now
    p2 = torch.stack([P[1][b], P[2][b, s]], 1)
    u2 = torch.rand(N, 2, generator=g, dtype=torch.float64)
    v2 = verify_sampled(s[:, None], scale(Q[1][b])[:, None], p2, u2)
    e = torch.where(torch.tensor(v2.num_accepted) > 0, s, torch.tensor(v2.next_token))
    if fallback == "fast":  # a miss yields the target's own sample, no draft
        e = torch.where(hit, e, pick(P[1][b], g))
    y1 = torch.where(k > 0, d1, b)
    y2 = torch.where(k > 0, b, e)
    return y1, y2, hit[k == 0]


@pytest.mark.parametrize("fallback, saguaro_c", [("jit", None), ("fast", None), ("jit", 0.4), ("fast", 0.4)])
@pytest.mark.parametrize("seed", [0, 1])
def test_cached_drafts_keep_sampling_exact(fallback, saguaro_c, seed):
    """TV(first two emitted tokens, exact target joint) < 0.01 over 1e5 draws, hits and misses both frequent."""
    g = torch.Generator().manual_seed(100 + seed)
    V = 4
    P, Q = random_tables(g, V, 1.0)
    y1, y2, hits = simulate_two_rounds(P, Q, fallback, F=1, saguaro_c=saguaro_c, seed=seed)
    emp = torch.bincount(y1 * V + y2, minlength=V * V).double() / DRAWS
    exact = (P[0][:, None] * P[1]).flatten()
    assert 0.5 * (emp - exact).abs().sum().item() < 0.01
    assert 0.05 < hits.double().mean().item() < 0.97  # both the cached and the fallback path carry weight


def test_saguaro_scaling_raises_the_hit_rate():
    g = torch.Generator().manual_seed(100)
    P, Q = random_tables(g, 4, 1.0)
    plain = simulate_two_rounds(P, Q, "jit", F=1, saguaro_c=None, seed=0)[2].double().mean()
    scaled = simulate_two_rounds(P, Q, "jit", F=1, saguaro_c=0.3, seed=0)[2].double().mean()
    assert scaled > plain + 0.1  # measured: 0.43 -> 0.71


def test_sampled_ssd_end_to_end_follows_the_target(dirs):
    """Chi-square goodness of fit (p > 1e-4, fixed seeds) of the 2nd and 3rd tokens of 1500 seeded SSD
    generations (Saguaro on, auto fallback) against the exact marginals of the filtered target."""
    target, _, draft_dir = dirs
    params = [SamplingParams(max_tokens=3, temperature=0.6, top_k=40, seed=5000 + i) for i in range(1500)]
    prompt = [7, 3, 9]
    p2, p3 = exact_marginals(target, prompt, params[0])
    config = SSDConfig(k=2, fanout_size=2, miss_fanout=3, saguaro_c=0.5, auto_jit_max_batch=300)
    with SSDDecoder(ModelRunner(target, 256), draft_dir, config=config) as decoder:
        engine = Engine(decoder, config=EngineConfig(max_num_seqs=500))
        seqs = [engine.add_request(prompt, p) for p in params]
        while engine.has_unfinished():
            engine.step()
        stats = decoder.stats
    assert stats["hits"] > 0 and stats["misses"] > 0 and stats["num_accepted_tokens"] > 0
    assert_follow_marginals(seqs, p2, p3)


# ---- robustness ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["kill", "hang"])
def test_a_dead_or_hung_draft_fails_fast_and_leaves_no_child(dirs, how):
    target, _, draft_dir = dirs
    config = SSDConfig(k=2, recv_timeout_s=2.0)
    decoder = SSDDecoder(ModelRunner(target, 256), draft_dir, config=config)
    engine = Engine(decoder)
    engine.add_request([1, 2, 3], SamplingParams(max_tokens=200))
    for _ in range(3):
        engine.step()
    pid = decoder.process.pid
    os.kill(pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    t0 = time.monotonic()
    with pytest.raises(UserError, match="draft process") as e:
        for _ in range(50):
            engine.step()
    assert time.monotonic() - t0 < 10
    assert ("died" if how == "kill" else "no answer") in str(e.value)
    assert not decoder.process.is_alive() and decoder.process.exitcode is not None  # reaped: not a zombie
    assert not os.path.exists(f"/proc/{pid}")
    with pytest.raises(UserError, match="gone"):
        engine.step()
    decoder.close()  # idempotent


def test_mismatched_vocabularies_are_refused(dirs, tmp_path):
    target, _, _ = dirs
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "other")
    with pytest.raises(UserError, match="vocabulary has 101 tokens but the target's has 97"):
        SSDDecoder(ModelRunner(target, 256), tmp_path / "other", config=SSDConfig(k=2))


def test_config_is_validated_and_fanouts_are_sane():
    with pytest.raises(UserError, match="k must be"):
        SSDConfig(k=0)
    with pytest.raises(UserError, match="saguaro_c"):
        SSDConfig(saguaro_c=1.5)
    with pytest.raises(UserError, match="fallback"):
        SSDConfig(fallback="later")
    assert SSDConfig(k=3, fanout_size=2).fanout_sizes(3, after_miss=False) == [2, 2, 2, 2]
    geo = SSDConfig(k=4, fanout="geometric", fanout_size=4, geometric_alpha=0.5, geometric_budget=12)
    assert geo.fanout_sizes(4, after_miss=False) == [4, 3, 2, 1, 1]
    assert geo.fanout_sizes(0, after_miss=True) == [geo.miss_fanout]
    ada = SSDConfig(k=4, fanout="adaptive", fanout_size=3, miss_fanout=4)
    assert ada.fanout_sizes(4, after_miss=False) == [3] * 5  # before it has measured: F
    assert ada.fanout_sizes(4, after_miss=False, level=1) == [1] * 5
    assert ada.fanout_sizes(4, after_miss=True, level=1) == [2] * 5  # a miss widens the bet by miss - F
    assert ada.fanout_sizes(0, after_miss=True, level=3) == [4]
    assert SSDConfig(fanout="adaptive", fanout_size=3, miss_fanout=1).fanout_sizes(2, True, level=1) == [1] * 3
    assert SSDConfig(fallback="auto", auto_jit_max_batch=2).fallback_for(2) == "jit"
    assert SSDConfig(fallback="auto", auto_jit_max_batch=2).fallback_for(3) == "fast"
    with pytest.raises(UserError, match="target_threads"):
        SSDConfig(target_threads=0)
    # the target keeps off the draft's cores: on 2 cores with a 1-thread draft it steps with 1 thread
    assert SSDConfig().target_threads_for(available=2, current=2) == 1
    assert SSDConfig(draft_threads=2).target_threads_for(available=8, current=8) == 6
    assert SSDConfig().target_threads_for(available=8, current=2) == 2  # never more than it had
    assert SSDConfig(draft_threads=4).target_threads_for(available=2, current=2) == 1
    assert SSDConfig(target_threads=3).target_threads_for(available=2, current=2) == 3  # as asked
    assert SSDConfig(draft_device="cuda").target_threads_for(available=2, current=2) is None


def simulate_fanout(config: SSDConfig, mean_s, units, rounds: int = 800, seed: int = 0):
    """Drive the adaptive fan-out with rounds of mean_s[F] seconds (+-15% noise) and units(F, rng) tokens; returns
    it and the F it ran in each round."""
    rng = random.Random(seed)
    fanout, levels = AdaptiveFanout(config), []
    for _ in range(rounds):
        levels.append(fanout.level)
        fanout.round_done(mean_s[fanout.level] * rng.uniform(0.85, 1.15), units(fanout.level, rng))
    return fanout, levels


def test_adaptive_fanout_finds_the_fastest_f_under_noise():
    """Two machines, ten seeds each: the adaptive fan-out settles on the fastest F, and over 800 rounds (its
    first sweep and re-probes included) it is within 5% of always running that F."""
    config = SSDConfig(k=4, fanout="adaptive", fanout_size=3, miss_fanout=4)
    hit = {1: 0.50, 2: 0.62, 3: 0.69}
    # a slow draft beside the target, jit fallback (unit: one sequence-round): the longer of the verification
    # (slowed by the build's memory traffic) and the build, + jit on a miss: 55, 58, 69 ms, F = 1 is fastest
    shared = {f: max(45e-3 + 4e-3 * f, 5e-3 + 20e-3 * f) + (1 - hit[f]) * 12e-3 for f in hit}
    # a draft on its own device, 8 sequences, fast fallback: every round 30 ms, each sequence emits 2..5
    # tokens on a hit, 1 on a miss: the widest bet is fastest per token
    own = dict.fromkeys(hit, 30e-3)
    per_token = {f: 30e-3 / (8 * (hit[f] * 3.5 + 1 - hit[f])) for f in hit}

    for seed in range(10):
        fanout, levels = simulate_fanout(config, shared, lambda f, rng: 1, seed=seed)
        assert fanout.best == 1
        assert sum(shared[f] for f in levels) / len(levels) < 1.05 * shared[1]
        fanout, levels = simulate_fanout(
            config, own, lambda f, rng: sum(rng.randint(2, 5) if rng.random() < hit[f] else 1 for _ in range(8)),
            seed=seed)
        assert fanout.best == 3
        assert sum(per_token[f] for f in levels) / len(levels) < 1.05 * per_token[3]


def test_adaptive_fanout_counts_only_plain_rounds(dirs):
    """Rounds around a prefill or a change of batch are not timed, nor the first round after F changes."""
    _, target_dir, draft_dir = dirs
    model = load_draft_model(draft_dir, target_dir, "cpu", torch.float32)
    worker = DraftWorker(ModelRunner(model, 64), SSDConfig(k=2, fanout="adaptive", fanout_size=2))
    worker.step_arrived(None, [])  # after an "add"
    worker.step_arrived(1.0, [(7, 1, 5), (8, 0, 3)])
    worker.step_arrived(1.5, [(7, 2, 5), (8, 1, 3)], "fast")  # counted: 0.5 s, 5 tokens
    worker.step_arrived(1.75, [(7, 0, 5), (8, 1, 3)], "jit")  # counted: 0.25 s, 2 sequence-rounds
    worker.step_arrived(2.0, [(7, 0, 5)])  # sequence 8 finished: not counted
    worker.step_arrived(None, [])
    worker.step_arrived(2.4, [(7, 0, 5), (9, 0, 1)])  # after a prefill: not counted
    assert sum(worker.fanout.rounds_at_level.values()) == 2
    assert worker.fanout._seconds == 0.75 and worker.fanout._tokens == 7


def test_target_threads_apply_inside_the_block_only():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_draft_seed_differs_from_the_target_seed():
    from paperclub.engine.sequence import Sequence
    from paperclub.speculative.ssd import _draft_seed

    s = Sequence([1], SamplingParams(temperature=1.0, seed=42))
    assert _draft_seed(s) != 42
    a = make_generator(_draft_seed(s))
    assert not torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=make_generator(42)))



@pytest.mark.parametrize("when", ["decoding", "before_prefill"])
def test_a_lost_draft_falls_back_to_ar_when_asked_and_stays_exact(dirs, when):
    """With `draft_fallback` the running requests finish without the draft, token-identical to AR (greedy)."""
    target, _, draft_dir = dirs
    params = SamplingParams(max_tokens=40)
    prompts = PROMPTS[:3]
    ar = run(ARDecoder(ModelRunner(target, 256)), prompts, params)
    decoder = SSDDecoder(ModelRunner(target, 256), draft_dir, config=SSDConfig(k=2, recv_timeout_s=5.0))
    engine = Engine(decoder, config=EngineConfig(draft_fallback=True))
    pid = decoder.process.pid
    if when == "before_prefill":
        os.kill(pid, signal.SIGKILL)
        decoder.process.join(5)
    seqs = [engine.add_request(p, params) for p in prompts]
    steps = 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
        if when == "decoding" and steps == 3:
            os.kill(pid, signal.SIGKILL)
    assert [s.output_ids for s in seqs] == [a.output_ids for a in ar]
    assert engine.draft_fallbacks == 1 and isinstance(engine.decoder, ARDecoder)
    assert engine.decoder.runner.cache.free_slots == engine.decoder.runner.cache.num_slots  # every slot came back
    assert not os.path.exists(f"/proc/{pid}")
    decoder.close()


def test_a_ctrl_c_while_the_draft_starts_is_held_until_its_start_up_data_is_written():
    """Process.start() forks, then writes the child's start-up data: a KeyboardInterrupt between the two left the
    child with a short pipe (EOFError and a traceback). The interrupt is raised after the block instead."""
    import signal

    from paperclub.speculative.ssd import _sigint_deferred

    # Python's own handler, whatever an earlier test in this process left installed; raise_signal delivers to
    # this thread before it returns (os.kill may hand the signal to another thread, to be run whenever it is)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        done = []
        with pytest.raises(KeyboardInterrupt):
            with _sigint_deferred():
                signal.raise_signal(signal.SIGINT)
                for _ in range(1000):  # bytecode boundaries, where Python would run the handler
                    pass
                done.append(True)
        assert done == [True]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
        with _sigint_deferred():  # nothing pending: nothing raised
            pass
    finally:
        signal.signal(signal.SIGINT, before)
