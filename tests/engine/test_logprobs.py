"""Per-token log-probabilities: the raw model distribution at the position each token was emitted from, the same
for AR, SD and SSD, and cut at a stop."""

from __future__ import annotations

import math

import pytest
import torch

from paperclub.engine.decoder import ARDecoder
from paperclub.engine.runner import ModelRunner
from paperclub.engine.sampling import SamplingParams
from paperclub.engine.scheduler import Engine, EngineConfig
from paperclub.errors import UserError
from paperclub.speculative.config import SSDConfig
from paperclub.speculative.sd import SpeculativeDecoder
from paperclub.speculative.ssd import SSDDecoder
from tests.conftest import save_target_and_draft

pytest.importorskip("transformers")

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from paperclub.models.loader import load_model

    _, target, _, draft_dir = save_target_and_draft(tmp_path_factory.mktemp("lp"), "smollm2-tied")
    draft = load_model(draft_dir, torch.device("cpu"), torch.float32)
    return target, draft, draft_dir


def reference(target, prompt: list[int], output: list[int]) -> torch.Tensor:
    """log_softmax of one teacher-forced forward over prompt + output: row i is the distribution of output[i]."""
    runner = ModelRunner(target, 256)
    runner.reserve(1, len(prompt) + len(output) + 1)
    logits = runner.append([0], [0], [prompt + output[:-1]], False)[0]
    return torch.log_softmax(logits[len(prompt) - 1:].float(), -1)


def decode(decoder, params) -> list:
    engine = Engine(decoder, config=EngineConfig(max_num_seqs=4))
    seqs = [engine.add_request(p, params) for p in PROMPTS]
    while engine.has_unfinished():
        engine.step()
    return seqs


@pytest.mark.parametrize("mode", ["ar", "sd", "ssd"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_logprobs_are_the_raw_distribution_at_each_emitted_token(models, mode, temperature):
    target, draft, draft_dir = models
    params = SamplingParams(max_tokens=12, temperature=temperature, seed=3, logprobs=3)
    if mode == "ar":
        seqs = decode(ARDecoder(ModelRunner(target, 256)), params)
    elif mode == "sd":
        seqs = decode(SpeculativeDecoder(ModelRunner(target, 256), ModelRunner(draft, 256), k=3), params)
    else:
        with SSDDecoder(ModelRunner(target, 256), draft_dir, config=SSDConfig(k=3)) as decoder:
            seqs = decode(decoder, params)
    for s in seqs:
        assert len(s.logprobs) == len(s.output_ids) == 12
        ref = reference(target, s.prompt_ids, s.output_ids)
        for i, (token, (lp, top)) in enumerate(zip(s.output_ids, s.logprobs, strict=True)):
            assert lp == pytest.approx(ref[i, token].item(), abs=1e-4)
            values, ids = ref[i].topk(3)
            assert [t for t, _ in top] == ids.tolist()
            assert [v for _, v in top] == pytest.approx(values.tolist(), abs=1e-4)
            if temperature == 0:
                assert top[0][0] == token  # greedy picks the most likely token


def test_logprobs_stop_with_the_text_and_are_off_by_default(models):
    target, _, _ = models
    (plain,) = decode_one(target, SamplingParams(max_tokens=8))
    assert plain.logprobs == []
    stop_at = plain.output_ids[4]
    (cut,) = decode_one(target, SamplingParams(max_tokens=8, stop_token_ids=[stop_at], logprobs=0))
    assert cut.output_ids == plain.output_ids[: plain.output_ids.index(stop_at) + 1]
    assert len(cut.logprobs) == len(cut.output_ids) and all(top == [] for _, top in cut.logprobs)
    assert all(lp <= 0 and math.isfinite(lp) for lp, _ in cut.logprobs)


def decode_one(target, params):
    engine = Engine(ARDecoder(ModelRunner(target, 256)))
    seq = engine.add_request(PROMPTS[0], params)
    while engine.has_unfinished():
        engine.step()
    return [seq]


@pytest.mark.parametrize("bad", [-1, 21, 2.5, "3"])
def test_bad_logprobs_are_refused(bad):
    with pytest.raises(UserError, match="logprobs"):
        SamplingParams(logprobs=bad)


def test_top_logprobs_list_ties_in_the_order_greedy_breaks_them():
    from paperclub.engine.sampling import greedy_tokens, top_logprobs

    lp = torch.log_softmax(torch.tensor([0.0, 1.0, 3.0, 2.0, 3.0, 3.0, -1.0]), dim=-1)
    assert [t for t, _ in top_logprobs(lp, 2)] == [2, 4]  # three tied maxima: the lowest ids, in order
    assert [t for t, _ in top_logprobs(lp, 4)] == [2, 4, 5, 3]
    assert top_logprobs(lp, 1)[0][0] == int(greedy_tokens(lp[None])[0])
    values = [v for _, v in top_logprobs(lp, 5)]
    assert values == sorted(values, reverse=True) and values[0] == pytest.approx(lp.max().item())
    g = torch.Generator().manual_seed(0)
    for _ in range(50):  # untied rows: the same as topk
        row = torch.randn(1000, generator=g)
        assert [t for t, _ in top_logprobs(row, 5)] == row.topk(5).indices.tolist()
