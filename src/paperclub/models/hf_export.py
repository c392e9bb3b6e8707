"""Our `Llama` written back as a Hugging Face model directory (the inverse of `loader.py`): fused qkv and
gate/up split into their HF tensors, a `config.json` from `hf_config.HFConfig`, the tokenizer files beside it.
A model trained here (a scaling-study run, a draft) then loads in the engine, in transformers and in the
GGUF converter like any downloaded checkpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from paperclub.atomic import atomic_path
from paperclub.models.config import ModelConfig
from paperclub.models.hf_config import HFConfig


def layer_tensors(layer, cfg: ModelConfig, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """One decoder block's tensors under HF names (`prefix` like "model.layers.3.")."""
    q, k, v = layer.attn.qkv.weight.split([cfg.q_size, cfg.kv_size, cfg.kv_size])
    gate, up = layer.mlp.gate_up.weight.split(cfg.intermediate_size)
    names = {"self_attn.q_proj.weight": q, "self_attn.k_proj.weight": k, "self_attn.v_proj.weight": v,
             "self_attn.o_proj.weight": layer.attn.o.weight, "mlp.gate_proj.weight": gate, "mlp.up_proj.weight": up,
             "mlp.down_proj.weight": layer.mlp.down.weight, "input_layernorm.weight": layer.attn_norm.weight,
             "post_attention_layernorm.weight": layer.mlp_norm.weight}
    if layer.attn.qkv.bias is not None:
        qb, kb, vb = layer.attn.qkv.bias.split([cfg.q_size, cfg.kv_size, cfg.kv_size])
        names |= {"self_attn.q_proj.bias": qb, "self_attn.k_proj.bias": kb, "self_attn.v_proj.bias": vb}
    if layer.attn.o.bias is not None:
        names["self_attn.o_proj.bias"] = layer.attn.o.bias
    if layer.attn.q_norm is not None:
        names |= {"self_attn.q_norm.weight": layer.attn.q_norm.weight,
                  "self_attn.k_norm.weight": layer.attn.k_norm.weight}
    for name, t in names.items():
        yield prefix + name, t


def hf_tensors(model) -> dict[str, torch.Tensor]:
    """Every tensor of a `Llama` under its HF name (the tied head written once, as HF does)."""
    cfg = model.cfg
    out = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = model.lm_head.weight
    for i, layer in enumerate(model.layers):
        out |= dict(layer_tensors(layer, cfg, f"model.layers.{i}."))
    return out


def hf_config(cfg: ModelConfig, dtype: str = "float32") -> HFConfig:
    if cfg.model_type != "llama" or cfg.qk_norm or cfg.sliding_window or cfg.o_bias != cfg.qkv_bias:
        raise ValueError("only Llama configs (no q/k norm, no sliding window, attention_bias on all four "
                         "projections or none) are written back")
    eos = list(cfg.eos_token_ids)
    return HFConfig(
        model_type="llama", vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling or None,
        tie_word_embeddings=cfg.tie_word_embeddings, attention_bias=cfg.qkv_bias, bos_token_id=cfg.bos_token_id,
        eos_token_id=eos[0] if len(eos) == 1 else (eos or None), torch_dtype=dtype)


def save_hf_model(model, out: Path, tokenizer_files: dict[str, str | bytes], dtype: torch.dtype = torch.float32,
                  extra_config: dict | None = None) -> None:
    """Write `model` as an HF model folder at `out` (atomically): config.json, model.safetensors and the given
    tokenizer files (name -> content)."""
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    config = hf_config(model.cfg, name).to_hf_dict() | (extra_config or {})
    tensors = {k: t.detach().to("cpu", dtype).contiguous() for k, t in hf_tensors(model).items()}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for file, content in tokenizer_files.items():
            (tmp / file).write_bytes(content if isinstance(content, bytes) else content.encode())
