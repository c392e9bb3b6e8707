"""The engine on a CUDA device: the same contracts as on the CPU (logits agree with transformers, greedy AR, SD and
SSD are token-identical, seeded sampling is reproducible, rollback and branch decoding), with the SSD draft process
on the GPU too. Deselected by default (marker `gpu`); run with `pytest -m gpu` on a machine with a GPU."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from paperclub.engine.decoder import ARDecoder
from paperclub.engine.runner import ModelRunner
from paperclub.engine.sampling import SamplingParams
from paperclub.engine.scheduler import Engine, EngineConfig
from paperclub.models.llama import Llama
from paperclub.models.loader import load_model
from paperclub.speculative.config import SSDConfig
from paperclub.speculative.sd import SpeculativeDecoder
from paperclub.speculative.ssd import SSDDecoder
from tests.conftest import ARCH_CONFIGS, make_pair, save_target_and_draft
from tests.speculative.test_sd import run

# PAPERCLUB_TEST_DEVICE=cpu runs the same checks on the CPU (how this file is checked on machines without a GPU)
CUDA = torch.device(os.environ.get("PAPERCLUB_TEST_DEVICE", "cuda"))
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(CUDA.type == "cuda" and not torch.cuda.is_available(),
                                                  reason="needs a CUDA GPU")]
pytest.importorskip("transformers")
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15], [20, 21, 22, 23, 24], [30, 31], [40] * 9, [50]]


@pytest.fixture(autouse=True)
def strict_fp32():
    """Full fp32 matmuls (no TF32), so fp32 comparisons mean what they say."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def to_cuda(model: Llama, dtype: torch.dtype) -> Llama:
    model = copy.deepcopy(model).to(CUDA, dtype)
    model.set_rope()
    return model


@pytest.mark.parametrize("arch", list(ARCH_CONFIGS))
def test_logits_match_transformers_on_cuda(arch):
    hf, ours, _ = make_pair(arch)
    hf, ours = hf.to(CUDA), to_cuda(ours, torch.float32)
    tokens = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf(tokens.to(CUDA)).logits.float()
    runner = ModelRunner(ours, 64)
    runner.reserve(2, 16)
    got = runner.append([0, 1], [0, 0], tokens.tolist(), last_only=False)
    assert got.device.type == CUDA.type
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory):
    """A tiny target (head_dim 16: the CPU's batch-invariant attention applies too) and a perturbed draft."""
    hf, _, target_dir, draft_dir = save_target_and_draft(tmp_path_factory.mktemp("cuda_models"), "llama2")
    return hf, target_dir, draft_dir


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 8])
def test_greedy_ar_sd_ssd_are_token_identical_on_cuda(saved_pair, dtype, batch):
    hf, target_dir, draft_dir = saved_pair
    target = load_model(target_dir, CUDA, dtype)
    draft = load_model(draft_dir, CUDA, dtype)
    params = SamplingParams(max_tokens=24)
    ar = run(ARDecoder(ModelRunner(target, 256)), PROMPTS, params, batch)
    sd = run(SpeculativeDecoder(ModelRunner(target, 256), ModelRunner(draft, 256), k=4), PROMPTS, params, batch)
    config = SSDConfig(k=4, draft_device=str(CUDA), draft_dtype=dtype, fallback="jit")
    with SSDDecoder(ModelRunner(target, 256), draft_dir, target_dir, config) as decoder:
        ssd = run(decoder, PROMPTS, params, batch)
        stats = dict(decoder.stats)
    for a, b, c in zip(ar, sd, ssd, strict=True):
        assert a.output_ids == b.output_ids == c.output_ids
    accepted = sum(s.stats["num_accepted_tokens"] for s in sd)
    assert 0 < accepted < sum(s.stats["num_draft_tokens"] for s in sd)  # both outcomes exercised
    assert stats["hits"] > 0 and stats["num_drafts"] > 0
    if dtype == torch.float32 and batch == 1:  # and AR is transformers' greedy decoding (full forward per token)
        hf = hf.to(CUDA)
        for p, s in zip(PROMPTS, ar, strict=True):
            ids = list(p)
            with torch.no_grad():
                for _ in range(params.max_tokens):
                    ids.append(int(hf(torch.tensor([ids], device=CUDA)).logits[0, -1].argmax()))
            assert ids[len(p):] == s.output_ids

def test_seeded_sampling_is_reproducible_and_batch_independent_on_cuda(saved_pair):
    _, target_dir, draft_dir = saved_pair
    target = load_model(target_dir, CUDA, torch.float32)
    draft = load_model(draft_dir, CUDA, torch.float32)
    params = [SamplingParams(max_tokens=16, temperature=0.9, top_p=0.95, seed=i) for i in range(len(PROMPTS))]

    def sd_run(prompts, plist, batch):
        engine = Engine(SpeculativeDecoder(ModelRunner(target, 256), ModelRunner(draft, 256), k=3),
                        config=EngineConfig(max_num_seqs=batch))
        seqs = [engine.add_request(p, q) for p, q in zip(prompts, plist, strict=True)]
        while engine.has_unfinished():
            engine.step()
        return [s.output_ids for s in seqs]

    batched = sd_run(PROMPTS, params, 8)
    assert batched == sd_run(PROMPTS, params, 8)
    assert sd_run(PROMPTS[3:4], params[3:4], 1)[0] == batched[3]


def test_rollback_and_branch_decoding_on_cuda(saved_pair):
    """A rolled-back sequence re-appended gives the logits it had; branches after a shared prefix give the logits
    of each branch decoded alone."""
    _, target_dir, _ = saved_pair
    model = load_model(target_dir, CUDA, torch.float32)
    runner = ModelRunner(model, 256)
    runner.reserve(2, 64)
    prefix, tail = [5, 6, 7, 8, 9], [10, 11, 12]
    full = runner.append([0], [0], [prefix + tail], last_only=False)[0]
    again = runner.append([0], [len(prefix)], [tail], last_only=False)[0]  # roll back to len(prefix), redo
    torch.testing.assert_close(again, full[len(prefix):], atol=1e-5, rtol=1e-5)

    from paperclub.models.llama import AttentionMeta

    branches = [[20, 21], [30, 31]]
    n = len(prefix)
    runner.append([1], [0], [prefix], last_only=True)
    write = torch.tensor([[n, n + 1, n + 2, n + 3]], device=CUDA)
    positions = torch.tensor([[n, n + 1, n, n + 1]], device=CUDA)
    S = n + 4
    j = torch.arange(S, device=CUDA)
    own = [[*range(n), n], [*range(n), n, n + 1], [*range(n), n + 2], [*range(n), n + 2, n + 3]]
    mask = torch.zeros(1, 1, 4, S, dtype=torch.bool, device=CUDA)
    for t, cols in enumerate(own):
        mask[0, 0, t] = (j[:, None] == torch.tensor(cols, device=CUDA)[None, :]).any(-1)
    meta = AttentionMeta(slots=torch.tensor([1], device=CUDA), write_index=write, kv_len=S, mask=mask)
    tree = runner.forward_meta(torch.tensor([branches[0] + branches[1]], device=CUDA), positions, meta)[0]
    for b, branch in enumerate(branches):
        alone = runner.append([0], [n], [branch], last_only=False)[0]
        torch.testing.assert_close(tree[2 * b : 2 * b + 2], alone, atol=1e-4, rtol=1e-4)


def test_cuda_graphs_replay_what_eager_computes(saved_pair):
    """Greedy AR with graph replay equals eager AR, also after the cache is reallocated (graphs dropped and
    recaptured)."""
    if CUDA.type != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    _, target_dir, _ = saved_pair
    model = load_model(target_dir, CUDA, torch.float32)
    graphed, eager = ModelRunner(model, 256), ModelRunner(model, 256, cuda_graphs=False)
    assert graphed.graphs is not None and eager.graphs is None
    params = SamplingParams(max_tokens=80)
    want = [s.output_ids for s in run(ARDecoder(eager), PROMPTS, params, 8)]
    assert [s.output_ids for s in run(ARDecoder(graphed), PROMPTS, params, 8)] == want
    assert graphed.graphs.replays > 60
    generation, captures = graphed.cache.generation, graphed.graphs.captures
    graphed.reserve(graphed.cache.num_slots, 2 * graphed.cache.capacity)  # new cache tensors: graphs are stale
    assert graphed.cache.generation == generation + 1
    assert [s.output_ids for s in run(ARDecoder(graphed), PROMPTS, params, 8)] == want
    assert graphed.graphs.captures > captures

    # and verification-shaped forwards (T = 5, all logits): eager on first sight, then captured, then replayed
    def fresh(cuda_graphs):
        r = ModelRunner(model, 256, cuda_graphs=cuda_graphs)
        r.reserve(2, 64)
        r.append([0, 1], [0, 0], [[1, 2, 3], [4, 5, 6]], last_only=True)
        return r

    runner = fresh(None)
    for i in range(3):
        chunks = [[7 + i, 8, 9, 10, 11], [12, 13, 14, 15, 16 + i]]
        got = runner.append([0, 1], [3, 3], chunks, last_only=False)
        want = fresh(False).append([0, 1], [3, 3], chunks, last_only=False)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert runner.graphs.captures == 1 and runner.graphs.replays == 1
