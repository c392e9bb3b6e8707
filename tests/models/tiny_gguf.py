"""A tiny random Llama (or Qwen2) written as a GGUF the way llama.cpp's converter writes one.

Independent of the code under test: the q/k row permutation here is llama.cpp's `permute` (per head,
rows (2, d/2) -> (d/2, 2)), written out directly, and the byte-level alphabet is GPT-2's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "Ġ"), ("ð", "Ł")]
TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def gpt2_byte_alphabet() -> list[str]:
    """GPT-2's byte -> printable character table, as a list indexed by byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


@dataclass
class TinySpec:
    arch: str = "llama"
    hidden: int = 32
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 48
    layers: int = 2
    context: int = 256
    rope_theta: float = 50000.0
    eps: float = 1e-5
    tied: bool = False
    add_bos: bool = False
    pre: str = "smollm"


def tokens() -> list[str]:
    vocab = SPECIALS + gpt2_byte_alphabet()
    vocab += ["".join(m) for m in MERGES]
    return vocab


def hf_state_dict(spec: TinySpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights under Hugging Face names."""
    rng = np.random.default_rng(seed)
    head_dim = spec.hidden // spec.heads
    n_vocab = len(tokens())
    r = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    sd = {"model.embed_tokens.weight": r(n_vocab, spec.hidden), "model.norm.weight": r(spec.hidden)}
    if not spec.tied:
        sd["lm_head.weight"] = r(n_vocab, spec.hidden)
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = r(spec.hidden)
        sd[p + "post_attention_layernorm.weight"] = r(spec.hidden)
        sd[p + "self_attn.q_proj.weight"] = r(spec.heads * head_dim, spec.hidden)
        sd[p + "self_attn.k_proj.weight"] = r(spec.kv_heads * head_dim, spec.hidden)
        sd[p + "self_attn.v_proj.weight"] = r(spec.kv_heads * head_dim, spec.hidden)
        sd[p + "self_attn.o_proj.weight"] = r(spec.hidden, spec.heads * head_dim)
        if spec.arch == "qwen2":
            sd[p + "self_attn.q_proj.bias"] = r(spec.heads * head_dim)
            sd[p + "self_attn.k_proj.bias"] = r(spec.kv_heads * head_dim)
            sd[p + "self_attn.v_proj.bias"] = r(spec.kv_heads * head_dim)
        sd[p + "mlp.gate_proj.weight"] = r(spec.ffn, spec.hidden)
        sd[p + "mlp.up_proj.weight"] = r(spec.ffn, spec.hidden)
        sd[p + "mlp.down_proj.weight"] = r(spec.hidden, spec.ffn)
    return sd


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's permute, spelled out with explicit indices."""
    rows = w.shape[0]
    half = rows // n_head // 2
    out = np.empty_like(w)
    for h in range(n_head):
        for i in range(half):
            for j in range(2):
                # GGUF row (h, i, j) holds HF row (h, j, i)
                out[h * 2 * half + i * 2 + j] = w[h * 2 * half + j * half + i]
    return out


_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def write_tiny_gguf(path: Path, spec: TinySpec, sd: dict[str, np.ndarray]) -> Path:
    head_dim = spec.hidden // spec.heads
    vocab = tokens()
    w = gguf.GGUFWriter(str(path), arch=spec.arch)
    w.add_name("tiny-test-model")
    w.add_block_count(spec.layers)
    w.add_context_length(spec.context)
    w.add_embedding_length(spec.hidden)
    w.add_feed_forward_length(spec.ffn)
    w.add_head_count(spec.heads)
    w.add_head_count_kv(spec.kv_heads)
    w.add_rope_freq_base(spec.rope_theta)
    w.add_layer_norm_rms_eps(spec.eps)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(len(vocab))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(spec.pre)
    w.add_token_list(vocab)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(vocab) - len(SPECIALS)))
    w.add_token_merges([f"{a} {b}" for a, b in MERGES])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(spec.add_bos)
    w.add_chat_template(TEMPLATE)
    for name, t in sd.items():
        if name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
            gname = _GLOBAL[name]
        else:
            _, _, layer, rest = name.split(".", 3)
            gname = f"blk.{layer}.{_GGUF_NAMES[rest]}"
            if spec.arch == "llama" and rest.startswith(("self_attn.q_proj.", "self_attn.k_proj.")):
                t = llama_cpp_permute(t, spec.heads if "q_proj" in rest else spec.kv_heads)
        w.add_tensor(gname, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
