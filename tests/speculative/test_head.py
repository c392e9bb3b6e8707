"""SD with a feature draft head (EAGLE-style): exact output, the head sees the right pairs, files round-trip."""

from __future__ import annotations

import json

import pytest
import torch

from paperclub.engine.decoder import ARDecoder
from paperclub.engine.runner import ModelRunner
from paperclub.engine.sampling import SamplingParams
from paperclub.engine.scheduler import Engine, EngineConfig
from paperclub.errors import UserError
from paperclub.models.draft_head import head_loss, init_head, is_head_dir, load_head, save_head
from paperclub.speculative.head_proposer import HeadProposer
from paperclub.speculative.sd import SpeculativeDecoder
from tests.speculative.test_sd import PROMPTS, assert_follow_marginals, exact_marginals, run

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def target_and_head(models):
    """The tiny target and a head over 80 of its 97 ids (so -inf logits are exercised), perturbed so it is right
    sometimes, not always."""
    target, _ = models
    vocab_ids = torch.randperm(97, generator=torch.Generator().manual_seed(3))[:80].sort().values
    head = init_head(target, vocab_ids, num_layers=1, init_layer=-1, seed=1)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if not name.startswith("embed."):
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return target, head.eval().requires_grad_(False)


def head_sd(target, head, k, prefix_cache_mb=0.0):
    return SpeculativeDecoder(ModelRunner(target, 256, prefix_cache_mb=prefix_cache_mb),
                              HeadProposer(head, k, 256), k=k)


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("batch", [1, 8])
def test_greedy_head_sd_is_token_identical_to_ar(target_and_head, k, batch):
    target, head = target_and_head
    params = SamplingParams(max_tokens=24)
    ar = run(ARDecoder(ModelRunner(target, 256)), PROMPTS, params, max_num_seqs=batch)
    spec = run(head_sd(target, head, k), PROMPTS, params, max_num_seqs=batch)
    for a, b in zip(ar, spec, strict=True):
        assert a.output_ids == b.output_ids
    accepted = sum(s.stats["num_accepted_tokens"] for s in spec)
    assert 0 < accepted < sum(s.stats["num_draft_tokens"] for s in spec)  # both outcomes are exercised


def test_head_drafts_from_the_true_pairs(target_and_head):
    """Each round's first draft is the head's argmax at pair (h_{M-2}, x_{M-1}) given every earlier true pair:
    the same as running the head causally over the target's teacher-forced states (cache bookkeeping, rope
    positions and rollback all checked at once)."""
    target, head = target_and_head
    firsts: list[tuple[int, int]] = []  # (sequence length M at the round, first draft token)
    proposer = HeadProposer(head, 3, 256)
    inner = proposer.propose

    def spy(seqs):
        prop = inner(seqs)
        firsts.append((seqs[0].length, int(prop.tokens[0, 0])))
        return prop

    proposer.propose = spy
    (s,) = run(SpeculativeDecoder(ModelRunner(target, 256), proposer, k=3), [[5, 9, 2, 44, 17]],
               SamplingParams(max_tokens=30))
    seq = torch.tensor([s.all_ids])
    with torch.no_grad():
        h = target.causal_forward(seq)  # (1, N, D): h_0..h_{N-1}
        pred = head.causal_forward(h[:, :-1], seq[:, 1:])  # output at pair i predicts x_{i+2}
        want = head.logits(pred).argmax(-1)[0]
    assert len(firsts) >= 5
    for m, tok in firsts:
        assert tok == int(want[m - 2]), f"round at length {m}"


@pytest.mark.parametrize("mode", ["ar", "head"])
def test_head_sampled_tokens_follow_the_target_distribution(target_and_head, mode):
    """Chi-square of the 2nd and 3rd tokens of 3000 seeded generations against the exact filtered target
    marginals (as for the draft LM in test_sd.py). Threshold p > 1e-4."""
    target, head = target_and_head
    params = [SamplingParams(max_tokens=3, temperature=0.6, top_k=40, seed=2000 + i) for i in range(3000)]
    prompt = [7, 3, 9]
    p2, p3 = exact_marginals(target, prompt, params[0])
    decoder = ARDecoder(ModelRunner(target, 256)) if mode == "ar" else head_sd(target, head, 2)
    engine = Engine(decoder, config=EngineConfig(max_num_seqs=256))
    seqs = [engine.add_request(prompt, p) for p in params]
    while engine.has_unfinished():
        engine.step()
    assert_follow_marginals(seqs, p2, p3)


def test_prefix_cached_prompt_stays_exact(target_and_head):
    """A prompt served from the prefix cache has no hidden states for its cached part: the head starts after it,
    and the output is still AR's."""
    target, head = target_and_head
    base = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4] * 2
    prompts = [base + [11], base + [12, 13]]
    params = SamplingParams(max_tokens=16)
    ar = run(ARDecoder(ModelRunner(target, 256)), prompts, params, max_num_seqs=1)
    decoder = head_sd(target, head, 3, prefix_cache_mb=4.0)
    spec = run(decoder, prompts, params, max_num_seqs=1)  # one at a time: the second finds the first's blocks
    assert spec[1].cached_prompt_tokens > 0
    for a, b in zip(ar, spec, strict=True):
        assert a.output_ids == b.output_ids


def test_head_loss_is_lowest_for_the_target_itself(target_and_head):
    """With features = the target's states, the cross-entropy part scores pair i against row i + 1's top-k."""
    target, head = target_and_head
    seq = torch.tensor([[5, 9, 2, 44, 17, 3, 8]])
    with torch.no_grad():
        h = target.causal_forward(seq)
        p = target.logits(h).softmax(-1)
    sub = torch.full((97,), -1, dtype=torch.long)
    sub[head.vocab_ids] = torch.arange(len(head.vocab_ids))
    top_p, top_ids = p.topk(4, dim=-1)
    ok = sub[top_ids] >= 0
    ids = sub[top_ids].clamp(min=0)
    top_p = top_p * ok
    top_p = top_p / top_p.sum(-1, keepdim=True)
    loss, parts = head_loss(head, h, seq, ids, top_p, torch.ones(1, 7), reg_weight=0.0)
    with torch.no_grad():
        pred = head.causal_forward(h[:, :-1], seq[:, 1:])  # pairs 0..5 score rows 1..6
        logq = head.subset_logits(pred).log_softmax(-1).gather(-1, ids[:, 1:])
        want = -(top_p[:, 1:] * logq).sum(-1).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert parts["ce"] == pytest.approx(want.item(), rel=1e-5) and parts["reg"] > 0


def test_unrolled_levels_see_what_drafting_steps_see(target_and_head):
    """Level s of the training-time unroll at pair i equals drafting step s in a real cache: the true pairs up to
    i-s+1, then s-1 steps each fed the previous step's predicted state (and the true next token)."""
    from paperclub.speculative.head_proposer import HeadRunner

    target, head = target_and_head
    seq = torch.tensor([[5, 9, 2, 44, 17, 3, 8, 61, 70, 12, 33]])
    N = seq.shape[1] - 1
    with torch.no_grad():
        h = target.causal_forward(seq)
        levels = head.unrolled_forward(h[:, :-1], seq[:, 1:], 3)
        assert torch.allclose(levels[0], head.causal_forward(h[:, :-1], seq[:, 1:]), atol=1e-5)
        for s in (2, 3):
            for i in range(s - 1, N):
                runner = HeadRunner(head, 64)
                runner.reserve(1, 64)
                first = i - s + 1  # the last true pair
                g = runner.append([0], [0], [h[0, : first + 1]], [seq[0, 1 : first + 2].tolist()])
                for step in range(1, s):
                    pos = first + step
                    g = runner.append([0], [pos], [g], [[int(seq[0, pos + 1])]])
                torch.testing.assert_close(g[0], levels[s - 1][0, i], atol=1e-4, rtol=1e-4)


def test_save_and_load_round_trip(tmp_path, target_and_head):
    target, head = target_and_head
    tdir = tmp_path / "target"
    tdir.mkdir()
    (tdir / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 97, "hidden_size": 64,
        "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 100000.0, "tie_word_embeddings": True}))
    save_head(head, tmp_path / "head", tdir, {"note": "test"})
    assert is_head_dir(tmp_path / "head") and not is_head_dir(tdir)
    back = load_head(tmp_path / "head", target, dtype=torch.float32)
    assert torch.equal(back.vocab_ids, head.vocab_ids)
    for (n, a), (_, b) in zip(sorted(head.own_state().items()), sorted(back.own_state().items()), strict=True):
        assert torch.equal(a.to(torch.bfloat16).float(), b), n  # stored in bf16
    with pytest.raises(UserError, match="not a paperclub draft head"):
        load_head(tdir, target)
    blob = (tmp_path / "head" / "model.safetensors").read_bytes()
    (tmp_path / "head" / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="cannot read"):
        load_head(tmp_path / "head", target)


def test_head_on_the_compiled_kernels_stays_exact_with_ragged_rows():
    """bf16 shapes the compiled CPU kernels take: the head's rows of different lengths (a new prompt beside
    verified rows) are packed as the target's are, and greedy output is still AR's."""
    from tests.conftest import kernel_sized_model

    target = kernel_sized_model()
    head = init_head(target, torch.arange(97), num_layers=1, init_layer=0, seed=2)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if not name.startswith("embed."):
                p.add_((torch.randn(p.shape, generator=g) * 0.05).to(p.dtype))
    head.eval().requires_grad_(False)
    params = SamplingParams(max_tokens=24)
    ar = run(ARDecoder(ModelRunner(target, 256)), PROMPTS, params, max_num_seqs=3)
    proposer = HeadProposer(head, 4, 256)
    spec = run(SpeculativeDecoder(ModelRunner(target, 256), proposer, k=4), PROMPTS, params, max_num_seqs=3)
    for a, b in zip(ar, spec, strict=True):
        assert a.output_ids == b.output_ids
    from paperclub.nn.cpu_kernels import usable

    if usable(torch.zeros(1, dtype=torch.bfloat16)):
        assert head.runs_fused(proposer.runner.cache.k[0])  # the packed path was the one tested
