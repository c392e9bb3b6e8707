"""Our Llama-family model against transformers (the oracle), fp32, in every runtime mode.

Each architecture gets a tiny randomly initialised config. The runtime modes are driven through the real
KV cache: ragged batched prefill, one-token decode, K+1-token verification, rollback, and branch decoding
with a tree mask; every logit must match transformers run on the plain token sequence to 1e-4.
"""

from __future__ import annotations

import pytest
import torch

from paperclub.engine.kv_cache import KVCache, causal_meta
from paperclub.models.config import ModelConfig
from paperclub.models.llama import AttentionMeta, Llama
from tests.conftest import ARCH_CONFIGS, BASE, make_pair

transformers = pytest.importorskip("transformers")
ARCHS = list(ARCH_CONFIGS)

TOL = 1e-4


def reference_logits(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float()


class Runner:
    """Drives our model through a KV cache the way the engine does."""

    def __init__(self, model: Llama, cfg: ModelConfig, slots: int):
        self.model, self.cfg = model, cfg
        self.cache = KVCache(cfg, "cpu", torch.float32, cfg.max_position_embeddings)
        self.cache.ensure(slots, 64)

    def append(self, slots: list[int], starts: list[int], chunks: list[list[int]]) -> list[torch.Tensor]:
        T = max(map(len, chunks))
        meta, pos = causal_meta(slots, starts, [len(c) for c in chunks], "cpu", self.cfg.sliding_window)
        tokens = torch.tensor([c + [0] * (T - len(c)) for c in chunks])
        return self._run(tokens, pos, meta, [len(c) for c in chunks])

    def _run(self, tokens, pos, meta, lengths):
        with torch.no_grad():
            h = self.model(tokens, pos, self.cache.k, self.cache.v, meta)
            logits = self.model.logits(h)
        return [logits[b, :n] for b, n in enumerate(lengths)]


def assert_close(ours: torch.Tensor, ref: torch.Tensor):
    diff = (ours - ref).abs().max().item()
    assert diff <= TOL, f"max abs diff {diff:.2e} > {TOL}"


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_decode_verify_rollback_match_transformers(arch):
    hf, model, cfg = make_pair(arch)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (n,), generator=gen).tolist() for n in (9, 4, 13)]
    run = Runner(model, cfg, slots=4)
    slots = [2, 0, 1]  # deliberately not a contiguous range: exercises the gather path

    # ragged batched prefill
    out = run.append(slots, [0, 0, 0], prompts)
    for p, o in zip(prompts, out, strict=True):
        assert_close(o, reference_logits(hf, p))
    seqs = [list(p) for p in prompts]

    # one-token decode for every row
    new = [[5], [17], [42]]
    out = run.append(slots, [len(s) for s in seqs], new)
    for s, n, o in zip(seqs, new, out, strict=True):
        s += n
        assert_close(o, reference_logits(hf, s)[-1:])

    # verification: K + 1 = 4 tokens per row in one forward
    block = [[1, 2, 3, 4], [9, 8, 7, 6], [11, 12, 13, 14]]
    out = run.append(slots, [len(s) for s in seqs], block)
    for s, n, o in zip(seqs, block, out, strict=True):
        s += n
        assert_close(o, reference_logits(hf, s)[-4:])

    # rollback each row by a different amount, then continue with other tokens
    for s, k in zip(seqs, (3, 1, 4), strict=True):
        del s[len(s) - k:]
    block = [[20, 21], [30], [40, 41, 42]]
    out = run.append(slots, [len(s) for s in seqs], block)
    for s, n, o in zip(seqs, block, out, strict=True):
        s += n
        assert_close(o, reference_logits(hf, s)[-len(n):])

    # contiguous slots (the view path) after all that
    out = run.append([0, 1], [len(seqs[1]), len(seqs[2])], [[3], [4]])
    assert_close(out[0], reference_logits(hf, seqs[1] + [3])[-1:])
    assert_close(out[1], reference_logits(hf, seqs[2] + [4])[-1:])


@pytest.mark.parametrize("arch", ["llama2", "qwen3-qk-norm", "smollm2-tied"])
def test_branch_decoding_matches_transformers(arch):
    """Three branches of two tokens after a shared prefix, in two forwards with a tree mask."""
    hf, model, cfg = make_pair(arch)
    prefix = [3, 14, 15, 92, 65, 35, 89]
    run = Runner(model, cfg, slots=1)
    run.append([0], [0], [prefix])
    P = len(prefix)
    branches = [[10, 11], [20, 21], [30, 31]]
    N = len(branches)
    # branch n's j-th token lives at cache index P + j*N + n; it sees the prefix and its own ancestors
    for j in range(2):
        write = torch.tensor([[P + j * N + n for n in range(N)]])
        pos = torch.full((1, N), P + j)
        S = P + (j + 1) * N
        mask = torch.zeros(1, 1, N, S, dtype=torch.bool)
        mask[..., :P] = True
        for n in range(N):
            for i in range(j + 1):
                mask[0, 0, n, P + i * N + n] = True
        meta = AttentionMeta(slots=torch.tensor([0]), write_index=write, kv_len=S, mask=mask, slot_range=(0, 1))
        tokens = torch.tensor([[b[j] for b in branches]])
        (logits,) = run._run(tokens, pos, meta, [N])
        for n, b in enumerate(branches):
            ref = reference_logits(hf, prefix + b[: j + 1])[-1]
            assert_close(logits[n], ref)


def test_config_refuses_unsupported_architecture():
    from paperclub.errors import UserError

    with pytest.raises(UserError, match="unsupported architecture 'gpt2'"):
        ModelConfig.from_hf({"model_type": "gpt2"})
    with pytest.raises(UserError, match="unsupported rope scaling 'yarn'"):
        ModelConfig.from_hf({**BASE, "model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 2}})


def test_rope_tables_in_the_activation_dtype_follow_the_float32_tables():
    """The bf16 copies a CPU decode step indexes are the float32 tables cast, rebuilt when those change."""
    cfg = ModelConfig(vocab_size=50, hidden_size=64, intermediate_size=96, num_layers=1, num_heads=4, num_kv_heads=2,
                      head_dim=16, max_position_embeddings=64)
    model = Llama(cfg, max_positions=16)
    cos, sin = model.rope_tables(torch.bfloat16)
    assert torch.equal(cos, model.rope_cos.to(torch.bfloat16)) and torch.equal(sin, model.rope_sin.to(torch.bfloat16))
    assert model.rope_tables(torch.bfloat16)[0] is cos  # kept, not cast again
    model.set_rope(32)
    cos32, _ = model.rope_tables(torch.bfloat16)
    assert cos32.shape[0] == 32 and torch.equal(cos32, model.rope_cos.to(torch.bfloat16))
    assert model.rope_tables(torch.float32)[0] is model.rope_cos


@pytest.mark.parametrize("arch", ARCHS)
def test_causal_forward_matches_transformers_and_trains(arch):
    """The cache-free path (training, scoring) gives transformers' logits, and gradients flow to every weight."""
    hf, model, cfg = make_pair(arch)
    gen = torch.Generator().manual_seed(3)
    rows = torch.randint(0, 97, (2, min(11, cfg.sliding_window or 11)), generator=gen)
    with torch.no_grad():
        ours = model.logits(model.causal_forward(rows))
    for b in range(2):
        assert_close(ours[b], reference_logits(hf, rows[b].tolist()))
    model.requires_grad_(True)
    loss = model.logits(model.causal_forward(rows)).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    model.requires_grad_(False)
    if cfg.sliding_window:
        with pytest.raises(ValueError, match="window"):
            model.causal_forward(torch.zeros(1, cfg.sliding_window + 1, dtype=torch.long))
