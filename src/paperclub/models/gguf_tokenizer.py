"""Rebuilding a Hugging Face `tokenizer.json` from the vocabulary a GGUF file carries.

A GGUF stores the tokenizer as metadata: `tokenizer.ggml.model` (`gpt2` = byte-level BPE), the tokens
(already spelled in the byte-level alphabet, space = `Ġ`), the merges, a type per token, and
`tokenizer.ggml.pre`, llama.cpp's name for how text is split before BPE. We map that name to the
equivalent `tokenizers` pre-tokenizer. `smollm` is GPT-2's split preceded by isolating every digit,
which is what SmolLM2's own `tokenizer.json` spells as `Digits(individual_digits=True)` followed by
`ByteLevel(add_prefix_space=False)`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from paperclub.errors import UserError

log = logging.getLogger(__name__)

# llama.cpp token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2()])


def _split(regex: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


# tokenizer.ggml.pre -> pre-tokenizer factory
PRE_TOKENIZERS = {
    "default": _gpt2,
    "gpt-2": _gpt2,
    "gpt2": _gpt2,
    "smollm": _digits_then_gpt2,
    "starcoder": _digits_then_gpt2,
    "llama-bpe": lambda: _split(_LLAMA3_SPLIT),
    "llama3": lambda: _split(_LLAMA3_SPLIT),
    "smaug-bpe": lambda: _split(_LLAMA3_SPLIT),
    "qwen2": lambda: _split(_QWEN2_SPLIT),
    "deepseek-r1-qwen": lambda: _split(_QWEN2_SPLIT),
}


@dataclass
class TokenizerFiles:
    """The contents of `tokenizer.json` and `tokenizer_config.json`."""

    tokenizer: HFTokenizer
    config: dict[str, Any] = field(default_factory=dict)


def build_tokenizer(meta: dict[str, Any]) -> TokenizerFiles:
    """Build the tokenizer described by GGUF metadata `meta` (key -> python value)."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UserError(
            f"this GGUF uses tokenizer model {kind!r}; only byte-level BPE ('gpt2') is supported. "
            "Convert the model with Hugging Face tooling and pass its directory instead"
        )
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    merges_raw: list[str] = list(meta.get("tokenizer.ggml.merges") or [])
    if not merges_raw:
        raise UserError("this GGUF's byte-level tokenizer has no merges; the file is incomplete")

    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if tok in vocab:
            log.warning("token %r appears twice (ids %d and %d); keeping the first", tok, vocab[tok], i)
            continue
        vocab[tok] = i
    merges = [tuple(m.split(" ", 1)) for m in merges_raw]
    model = models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
    tok = HFTokenizer(model)

    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        log.warning("unknown pre-tokenizer %r; falling back to GPT-2's split, tokenization may differ", pre)
    tok.pre_tokenizer = PRE_TOKENIZERS.get(pre, _gpt2)()
    tok.decoder = decoders.ByteLevel()

    typed = list(zip(tokens, types, strict=False))
    special = [AddedToken(t, special=True, normalized=False) for t, ty in typed if ty == CONTROL]
    user = [AddedToken(t, special=False, normalized=False) for t, ty in typed if ty == USER_DEFINED]
    tok.add_special_tokens(special)
    tok.add_tokens(user)

    def token(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    bos, eos = token("bos_token_id"), token("eos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    head = [bos] if add_bos and bos else []
    tail = [eos] if add_eos and eos else []
    single = [f"{t}:0" for t in head] + ["$A:0"] + [f"{t}:0" for t in tail]
    pair = single + [f"{t}:1" for t in head] + ["$B:1"] + [f"{t}:1" for t in tail]
    specials = [(t, vocab[t]) for t in {bos, eos} if t and ((t == bos and add_bos) or (t == eos and add_eos))]
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials),
        ]
    )

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get("_context_length", 2048)),
        "additional_special_tokens": [t.content for t in special if t.content not in {bos, eos}],
    }
    template = meta.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return TokenizerFiles(tok, config)
