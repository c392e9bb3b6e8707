"""Shared test fixtures: tiny randomly initialised models paired with their transformers twin."""

from __future__ import annotations

import pytest
import torch

from paperclub.models.config import ModelConfig
from paperclub.models.llama import Llama
from paperclub.models.loader import load_hf_weights

BASE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6)
ARCH_CONFIGS = {
    "llama2": ("LlamaConfig", dict(tie_word_embeddings=False)),
    "llama3-rope-scaling": ("LlamaConfig", dict(rope_theta=500000.0, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16))),
    "llama-attention-bias": ("LlamaConfig", dict(attention_bias=True)),
    "smollm2-tied": ("LlamaConfig", dict(tie_word_embeddings=True, rope_theta=100000.0, num_attention_heads=8,
                                         num_key_value_heads=2)),
    "mistral-sliding": ("MistralConfig", dict(sliding_window=6, head_dim=16)),
    "qwen2-qkv-bias": ("Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen3-qk-norm": ("Qwen3Config", dict(head_dim=32, tie_word_embeddings=False)),
}


def make_pair(arch: str):
    cls_name, extra = ARCH_CONFIGS[arch]
    import transformers

    hf_cfg = getattr(transformers, cls_name)(**{**BASE, **extra})
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # norms and biases too, so every weight is really tested
            p.add_(torch.randn_like(p) * 0.05)
    cfg = ModelConfig.from_hf(hf_cfg.to_dict())
    ours = Llama(cfg).eval()
    load_hf_weights(ours, hf.state_dict().items())
    return hf, ours, cfg


def save_target_and_draft(root, arch: str):
    """A tiny target and a perturbed copy as draft (agrees often, not always), saved as HF safetensors under
    root/target and root/draft. Returns (transformers target, our target, target dir, draft dir)."""
    import copy

    hf, ours, _ = make_pair(arch)
    hf.save_pretrained(root / "target")
    draft = copy.deepcopy(hf)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.03)
    draft.save_pretrained(root / "draft")
    return hf, ours, root / "target", root / "draft"


@pytest.fixture(scope="session")
def default_model_dir():
    """The embedded default model in the user cache (fetched and converted on first use)."""
    from paperclub.errors import UserError
    from paperclub.models.default_model import ensure_default_model

    try:
        return ensure_default_model()
    except UserError as e:
        pytest.skip(f"default model unavailable: {e}")


def kernel_sized_model() -> Llama:
    """A tiny random bf16 model with shapes the compiled CPU kernels take (head dim 32, widths multiples of 32)."""
    import transformers

    hf_cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = Llama(ModelConfig.from_hf(hf_cfg.to_dict()))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.dim() == 1 else 0.0))  # norms near 1
    return model.to(torch.bfloat16).eval().requires_grad_(False)
