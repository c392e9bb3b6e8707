"""GGUF -> Hugging Face conversion on a tiny synthetic model written the way llama.cpp writes one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from paperclub.errors import UserError
from paperclub.models.gguf_convert import (
    convert_gguf,
    gguf_tensor_name,
    hf_tensor_name,
    permute_for_gguf,
    unpermute_from_gguf,
)
from paperclub.models.safetensors_stream import read_header
from tests.models.tiny_gguf import TinySpec, hf_state_dict, llama_cpp_permute, tokens, write_tiny_gguf


def test_gguf_and_hf_tensor_names_are_inverse():
    for gguf_name in ("token_embd.weight", "output.weight", "output_norm.weight", "blk.0.attn_q.weight",
                      "blk.17.attn_k.bias", "blk.3.ffn_down.weight", "blk.29.ffn_norm.weight"):
        hf = hf_tensor_name(gguf_name)
        assert hf is not None and gguf_tensor_name(hf) == gguf_name
    assert gguf_tensor_name("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    assert gguf_tensor_name("model.layers.x.mlp.up_proj.weight") is None


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(4 * 16 * 3, dtype=np.float32).reshape(64, 3)
    for n_head in (1, 2, 4, 8):
        permuted = llama_cpp_permute(w, n_head)
        assert not np.array_equal(permuted, w)
        assert np.array_equal(permute_for_gguf(w, n_head), permuted)
        assert np.array_equal(unpermute_from_gguf(permuted, n_head), w)
    bias = np.arange(64, dtype=np.float32)
    assert np.array_equal(unpermute_from_gguf(llama_cpp_permute(bias, 4), 4), bias)


@pytest.mark.parametrize("arch,tied", [("llama", False), ("llama", True), ("qwen2", False)])
def test_round_trip_weights_exact_and_config(tmp_path, arch, tied):
    spec = TinySpec(arch=arch, tied=tied)
    sd = hf_state_dict(spec, seed=1)
    gguf_path = write_tiny_gguf(tmp_path / "t.gguf", spec, sd)
    result = convert_gguf(gguf_path, tmp_path / "out")
    out = tmp_path / "out"

    got = load_file(out / "model.safetensors")
    assert set(got) == set(sd)
    for name, w in sd.items():
        assert got[name].dtype == np.float32
        assert np.array_equal(got[name], w), name

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == arch
    assert cfg["architectures"] == ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"]
    assert cfg["hidden_size"] == spec.hidden
    assert cfg["intermediate_size"] == spec.ffn
    assert cfg["num_hidden_layers"] == spec.layers
    assert cfg["num_attention_heads"] == spec.heads
    assert cfg["num_key_value_heads"] == spec.kv_heads
    assert cfg["head_dim"] == spec.hidden // spec.heads
    assert cfg["vocab_size"] == len(tokens())
    assert cfg["max_position_embeddings"] == spec.context
    assert cfg["rope_theta"] == spec.rope_theta
    assert cfg["rms_norm_eps"] == spec.eps  # written as 1e-05, not float32's 9.99999974738e-06
    assert cfg["tie_word_embeddings"] is tied
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 2)
    assert cfg["torch_dtype"] == "float32"
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["bos_token"] == "<|im_start|>" and tok_cfg["eos_token"] == "<|im_end|>"
    assert tok_cfg["add_bos_token"] is False and "<|im_start|>" in tok_cfg["chat_template"]
    assert result.config.num_parameters == sum(w.size for w in sd.values())


def test_transformers_reads_converted_dir_like_the_gguf(tiny, tmp_path):
    """Same logits from transformers on our directory and on the GGUF it was made from."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    spec, sd, gguf_path = tiny
    convert_gguf(gguf_path, tmp_path / "out")
    ours = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    ids = torch.tensor([[5, 17, 200, 3, 99, 260, 41]])
    with torch.no_grad():
        a, b = ours(ids).logits, ref(ids).logits
    assert torch.equal(a, b)


def test_interrupted_conversion_leaves_nothing(tiny, tmp_path):
    _, _, gguf_path = tiny
    seen = []

    def boom(name):
        seen.append(name)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_gguf(gguf_path, tmp_path / "out", on_tensor=boom)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]  # no temporaries either


def test_force_replaces_existing_dir_only_when_asked(tiny, tmp_path):
    _, _, gguf_path = tiny
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(UserError, match="already exists.*--force"):
        convert_gguf(gguf_path, out)
    assert (out / "stale.txt").exists()
    convert_gguf(gguf_path, out, force=True)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()


def test_safetensors_header_is_valid_for_the_reference_reader(tiny, tmp_path):
    from safetensors import safe_open

    _, sd, gguf_path = tiny
    convert_gguf(gguf_path, tmp_path / "out")
    f = tmp_path / "out" / "model.safetensors"
    header = read_header(f)
    assert set(header) == set(sd)
    with safe_open(str(f), "np") as st:
        assert st.metadata() == {"format": "pt"}
        assert np.array_equal(st.get_tensor("model.norm.weight"), sd["model.norm.weight"])


def test_non_gguf_file_is_a_user_error(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(UserError, match="not a GGUF file"):
        convert_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_is_a_user_error(tmp_path):
    spec = TinySpec(arch="gpt2")
    path = write_tiny_gguf(tmp_path / "g.gguf", spec, hf_state_dict(TinySpec()))
    with pytest.raises(UserError, match="architecture 'gpt2' is not supported"):
        convert_gguf(path, tmp_path / "out")


def test_a_truncated_gguf_says_so(tmp_path, tiny):
    _, _, path = tiny
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt") as e:
        convert_gguf(cut, tmp_path / "out")
    assert "reshape" not in str(e.value) and not (tmp_path / "out").exists()
