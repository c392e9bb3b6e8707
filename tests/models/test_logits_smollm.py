"""The converted default model computes what transformers computes from the GGUF itself (slow: ~40 s)."""

from __future__ import annotations

import pytest

from paperclub.models.tokenizer import Tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(smol_dir, smol_gguf):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ours = transformers.LlamaForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).eval()
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        smol_gguf.parent, gguf_file=smol_gguf.name, dtype=torch.float32
    ).eval()
    return ours, ref


def test_logits_match_transformers_gguf_loader(models, smol_dir):
    import torch

    ours, ref = models
    tok = Tokenizer.from_dir(smol_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Write a haiku about the sea. 🌊"}])
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        a, b = ours(ids).logits, ref(ids).logits
    assert a.shape == (1, ids.shape[1], 49152)
    assert (a - b).abs().max().item() < 1e-4


def test_converted_model_answers_sensibly(models, smol_dir):
    """Independent of transformers' own GGUF reading: with q/k rows in the wrong order the rotary
    embedding scrambles attention and greedy decoding does not produce the right answer."""
    import torch

    ours, _ = models
    tok = Tokenizer.from_dir(smol_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        out = ours.generate(ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)
    assert "Paris" in answer
