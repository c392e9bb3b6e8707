"""The default model's tokenizer and chat template against transformers' reading of the same GGUF."""

from __future__ import annotations

import pytest

from paperclub.models.tokenizer import Tokenizer

TEXTS = [
    "Hello, world!",
    "What is the capital of France?",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>",
    "def add(a, b):\n    return a + b\n",
    "\tif x:\n\t\ty = 1\n\telse:\n\t\ty = 2\n",
    "class Foo:\n        pass  # eight spaces\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "x = 12345 + 678.9",
    "The answer is 42.",
    "2024-01-31T23:59:59Z",
    "3.14159265358979",
    "E = mc^2 and ∫ f(x) dx = F(b) − F(a)",
    "price: $1,000,000.00 (≈ €920k)",
    "héllo wörld, ça va? ñandú",
    "日本語のテキストです。",
    "Привет, мир!",
    "emoji: 🤗🎉🚀 and family 👨‍👩‍👧‍👦 and flag 🇫🇷",
    "mixed 😀text😀with😀emoji",
    "   leading spaces",
    "trailing spaces   ",
    "a\n\n\nb",
    "  \n  \n\t\n",
    "many     spaces     between",
    "",
    " ",
    "I'm sure they'll say it's fine, we've done it.",
    "URL: https://example.com/path?q=1&r=two#frag",
    "<|endoftext|>After the end",
    "<file_sep><filename>main.py\nprint('hi')",
    'JSON: {"key": [1, 2, 3], "nested": {"a": null}}',
]

# Where llama.cpp's `smollm` pre-tokenizer (and SmolLM2's own tokenizer.json: Digits(individual_digits)
# then ByteLevel) differ from transformers' GGUF loader, which has no `smollm` entry and uses GPT-2's
# split alone: a run of 2+ spaces before a digit. The digit split isolates the spaces, so they merge
# into "ĠĠ"; GPT-2's regex keeps one space with the digit (" 1") and the other alone.
SMOLLM_ONLY = {
    "a  1": ["a", "ĠĠ", "1"],
    "x =   42": ["x", "Ġ=", "ĠĠĠ", "4", "2"],
}


@pytest.fixture(scope="module")
def tok(smol_dir) -> Tokenizer:
    return Tokenizer.from_dir(smol_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(tok, smol_reference_tokenizer, text):
    assert tok.encode(text) == smol_reference_tokenizer.encode(text, add_special_tokens=True)
    assert tok.encode(text, add_special_tokens=False) == smol_reference_tokenizer.encode(
        text, add_special_tokens=False
    )


@pytest.mark.parametrize("text", TEXTS + list(SMOLLM_ONLY))
def test_decode_round_trips(tok, text):
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text,expected", SMOLLM_ONLY.items())
def test_digits_are_split_before_bytelevel_like_llama_cpp_smollm(
    tok, smol_reference_tokenizer, text, expected
):
    ids = tok.encode(text)
    assert [tok.id_to_token(i) for i in ids] == expected
    assert ids != smol_reference_tokenizer.encode(text)  # documents the transformers loader's difference
    # transformers agrees once it is given SmolLM2's real pre-tokenizer
    from tokenizers import pre_tokenizers

    backend = smol_reference_tokenizer.backend_tokenizer
    saved = backend.pre_tokenizer
    try:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
        assert backend.encode(text).ids == ids
    finally:
        backend.pre_tokenizer = saved


def test_special_tokens_and_ids(tok):
    assert tok.encode("<|im_start|>") == [1]
    assert tok.encode("<|im_end|>") == [2]
    assert tok.bos_token_id == 1
    assert tok.eos_token_ids == {2}
    assert tok.vocab_size == 49152
    assert tok.add_bos_token is False
    assert tok.decode([1, 28120, 2], skip_special_tokens=True) == tok.decode([28120])
    assert "<|im_start|>" in tok.decode([1, 28120, 2])


CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3? 🤔"},
    ],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Name a colour."}],
    [
        {"role": "system", "content": "You write code."},
        {"role": "user", "content": "def f():\n\tpass"},
        {"role": "assistant", "content": "```python\nprint('ok')\n```"},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(tok, smol_reference_tokenizer, messages, add_generation_prompt):
    ours = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    ref = smol_reference_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours == ref
    if messages[0]["role"] != "system":
        assert ours.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert ours.endswith("<|im_start|>assistant\n") == add_generation_prompt


EMOJI_TEXTS = [
    "🤗🎉🚀👨‍👩‍👧‍👦🇫🇷🇯🇵 fin",
    "日本語と😀絵文字🙃が混在",
    "a🎉b🎉c🎉d" * 5,
    "Ωμέγα ∑∫√ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀",
]


@pytest.mark.parametrize("text", EMOJI_TEXTS)
@pytest.mark.parametrize("skip", [False, True])
def test_stream_decoder_concatenation_equals_decode(tok, text, skip):
    ids = tok.encode("<|im_start|>assistant\n" + text + "<|im_end|>")
    stream = tok.stream_decoder(skip_special_tokens=skip)
    pieces = [stream.push(i) for i in ids]
    pieces.append(stream.flush())
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=skip)
    assert not any("\ufffd" in p for p in pieces)  # never a broken character mid-stream
    multi_token_chars = sum(1 for p in pieces[:-1] if p == "")
    assert multi_token_chars > 0  # the text really has characters spanning several tokens


def test_stream_decoder_flushes_invalid_tail(tok):
    ids = tok.encode("ok 🤗")
    stream = tok.stream_decoder()
    out = "".join(stream.push(i) for i in ids[:-1])  # stop in the middle of the emoji's bytes
    assert "\ufffd" not in out
    assert out + stream.flush() == tok.decode(ids[:-1])


def test_stream_decoder_on_random_token_sequences(tok):
    """Any id sequence (even ones that cut characters or are invalid UTF-8) streams to exactly decode()."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    # ids whose tokens are partial UTF-8 (bytes 0x80-0xFF in GPT-2's alphabet), plus ordinary and special ids
    partial = [i for i in range(tok.vocab_size) if any(0xA1 <= ord(c) <= 0x1FF for c in tok.id_to_token(i))]
    ids = st.one_of(st.sampled_from(partial[:2000]), st.integers(0, tok.vocab_size - 1))

    @settings(max_examples=150, deadline=None)
    @given(st.lists(ids, max_size=24), st.booleans())
    def check(seq, skip):
        stream = tok.stream_decoder(skip_special_tokens=skip)
        text = "".join(stream.push(i) for i in seq) + stream.flush()
        assert text == tok.decode(seq, skip_special_tokens=skip)

    check()
