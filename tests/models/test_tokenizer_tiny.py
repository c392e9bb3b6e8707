"""The tokenizer rebuilt from a tiny synthetic GGUF vocabulary (runs without the real model)."""

from __future__ import annotations

import pytest

from paperclub.errors import UserError
from paperclub.models.gguf_convert import convert_gguf
from paperclub.models.tokenizer import Tokenizer
from tests.models.tiny_gguf import TinySpec, hf_state_dict, write_tiny_gguf


def _convert(tmp_path, **kw) -> Tokenizer:
    spec = TinySpec(**kw)
    path = write_tiny_gguf(tmp_path / "t.gguf", spec, hf_state_dict(spec))
    convert_gguf(path, tmp_path / "out")
    return Tokenizer.from_dir(tmp_path / "out")


def _pieces(tok: Tokenizer, text: str) -> list[str]:
    return [tok.id_to_token(i) for i in tok.encode(text)]


def test_merges_specials_and_digits(tmp_path):
    tok = _convert(tmp_path)
    assert _pieces(tok, " the") == ["Ġthe"]
    assert _pieces(tok, "<|im_start|>in<|im_end|>") == ["<|im_start|>", "in", "<|im_end|>"]
    assert _pieces(tok, "  7") == ["ĠĠ", "7"]  # smollm: digits isolated before the byte-level split
    assert _pieces(tok, "x 12") == ["x", "Ġ", "1", "2"]
    assert tok.decode(tok.encode("héllo 🤗 12")) == "héllo 🤗 12"
    assert tok.eos_token_ids == {2}
    assert tok.special_token_ids == {0, 1, 2}


def test_gpt2_pre_tokenizer_keeps_space_with_digits(tmp_path):
    tok = _convert(tmp_path, pre="gpt-2")
    assert _pieces(tok, "  7") == ["Ġ", "Ġ", "7"]  # GPT-2's regex: " " then " 7" (no "Ġ7" merge)


def test_add_bos_token(tmp_path):
    tok = _convert(tmp_path, add_bos=True)
    assert tok.encode("in") == [1, tok.token_to_id("in")]
    assert tok.encode("in", add_special_tokens=False) == [tok.token_to_id("in")]
    assert tok.decode(tok.encode("in"), skip_special_tokens=True) == "in"


def test_chat_template_rendering_and_errors(tmp_path):
    tok = _convert(tmp_path)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(UserError, match="'role'"):
        tok.apply_chat_template([{"content": "no role"}])


def test_chat_template_helpers_like_transformers():
    from paperclub.models.chat_template import ChatTemplate

    t = ChatTemplate(
        "{% for m in messages %}\n  {% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}\n"
        "{{ m.content | tojson }}{% endfor %}"
    )
    assert t.render([{"role": "user", "content": "é"}]) == '"é"'  # trim/lstrip blocks; tojson keeps UTF-8
    with pytest.raises(UserError, match="no tools"):
        t.render([{"role": "tool", "content": "x"}])
    with pytest.raises(UserError, match="not valid Jinja"):
        ChatTemplate("{% for %}")
    # sandboxed: no access to Python internals
    with pytest.raises(UserError, match="chat template failed"):
        ChatTemplate("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}").render([])
