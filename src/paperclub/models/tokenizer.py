"""The tokenizer of a Hugging Face model directory: encode, decode, chat template, streaming decode.

Built on the `tokenizers` library (`tokenizer.json`) plus `tokenizer_config.json` for the chat template and
special tokens; `generation_config.json` and `config.json` add the end-of-sequence ids.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from paperclub.errors import UserError
from paperclub.models.chat_template import ChatTemplate

log = logging.getLogger(__name__)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-download or re-convert the model") from None
    return d if isinstance(d, dict) else {}


def _token_text(value: Any) -> str | None:
    """`tokenizer_config.json` writes special tokens either as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any) -> set[int]:
    if isinstance(value, int):
        return {value}
    if isinstance(value, list):
        return {v for v in value if isinstance(v, int)}
    return set()


class Tokenizer:
    """Tokenizer loaded from a Hugging Face model directory."""

    def __init__(self, backend: HFTokenizer, config: dict[str, Any], eos_token_ids: set[int]):
        self._tok = backend
        self.config = config
        self.bos_token: str | None = _token_text(config.get("bos_token"))
        self.eos_token: str | None = _token_text(config.get("eos_token"))
        self.pad_token: str | None = _token_text(config.get("pad_token"))
        self.bos_token_id: int | None = self.token_to_id(self.bos_token) if self.bos_token else None
        self.pad_token_id: int | None = self.token_to_id(self.pad_token) if self.pad_token else None
        eos = set(eos_token_ids)
        if self.eos_token and self.token_to_id(self.eos_token) is not None:
            eos.add(self.token_to_id(self.eos_token))
        self.eos_token_ids: set[int] = eos
        self.add_bos_token = bool(config.get("add_bos_token", False))
        self.special_token_ids: set[int] = {
            i for i, t in backend.get_added_tokens_decoder().items() if t.special
        }
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        self.chat_template: ChatTemplate | None = ChatTemplate(template) if template else None

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Tokenizer:
        """Load from `<model_dir>/tokenizer.json` (+ the config files next to it)."""
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise UserError(
                f"{model_dir} has no tokenizer.json; re-convert the model or use a directory that has one"
            )
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as e:
            raise UserError(
                f"{path} could not be loaded ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                "re-download or re-convert the model"
            ) from None
        config = _read_json(model_dir / "tokenizer_config.json")
        template_file = model_dir / "chat_template.jinja"
        if "chat_template" not in config and template_file.is_file():
            config["chat_template"] = template_file.read_text()
        eos: set[int] = set()
        for name in ("generation_config.json", "config.json"):
            eos |= _ids(_read_json(model_dir / name).get("eos_token_id"))
        return cls(backend, config, eos)

    @property
    def vocab_size(self) -> int:
        """Number of token ids (including added tokens)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids for `text`. Special tokens written in the text (`<|im_start|>`) become their ids;
        `add_special_tokens` adds what the model wants around a sequence (BOS, if `add_bos_token`)."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """The prompt text for `messages` ([{"role": ..., "content": ...}]) in this model's chat format."""
        if self.chat_template is None:
            raise UserError("this model has no chat template; send a plain prompt instead of messages")
        return self.chat_template.render(
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            **kwargs,
        )

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)


class StreamDecoder:
    """Turns token ids, fed one at a time, into text pieces whose concatenation equals `decode(all ids)`.

    A character can span several byte-level tokens; its first tokens alone decode to U+FFFD. So we hold
    back text until the decoded tail no longer ends in U+FFFD. Decoding always restarts from a token
    where all earlier text was complete (`_start`), and only the part beyond what was already emitted
    from that point (`_done`) is new; decoders that drop a leading space (sentencepiece) see the same
    context they would in a full decode. `flush()` emits what is left (e.g. a truly invalid byte).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._start = 0  # ids[_start:] is the window we decode
        self._done = 0  # ids[_start:_done] were emitted in full
        self._emitted_in_window = ""

    def push(self, token_id: int) -> str:
        """Add one token; return the newly complete text (often "", never a broken character)."""
        self._ids.append(token_id)
        text = self._tokenizer.decode(self._ids[self._start :], skip_special_tokens=self._skip)
        if text.endswith("\ufffd") or len(text) <= len(self._emitted_in_window):
            return ""
        new = text[len(self._emitted_in_window) :]
        # Slide the window: keep the last complete token as context for the next decode.
        self._start = self._done
        self._done = len(self._ids)
        self._emitted_in_window = self._tokenizer.decode(
            self._ids[self._start :], skip_special_tokens=self._skip
        )
        return new

    def flush(self) -> str:
        """Return any held-back text (invalid UTF-8 at the very end shows as U+FFFD)."""
        text = self._tokenizer.decode(self._ids[self._start :], skip_special_tokens=self._skip)
        new = text[len(self._emitted_in_window) :]
        self._start = self._done = len(self._ids)
        self._emitted_in_window = ""
        return new

    @property
    def token_ids(self) -> list[int]:
        return list(self._ids)
