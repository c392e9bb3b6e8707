"""Rendering a model's Jinja chat template the way Hugging Face transformers does.

Same environment settings as transformers (sandboxed, `trim_blocks`, `lstrip_blocks`, loop controls),
the `raise_exception` and `strftime_now` helpers, and a `tojson` filter that keeps non-ASCII text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from paperclub.errors import UserError


def _raise_exception(message: str) -> None:
    raise UserError(f"chat template refused the conversation: {message}")


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False
):
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template. `render(messages, add_generation_prompt=..., **variables) -> str`."""

    def __init__(self, source: str):
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols], undefined=jinja2.Undefined
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self.source = source
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise UserError(
                f"the model's chat template is not valid Jinja (line {e.lineno}: {e.message})"
            ) from None

    def render(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True, **variables: Any
    ) -> str:
        for m in messages:
            if not isinstance(m, dict) or "role" not in m:
                raise UserError(f"each message needs a 'role' and 'content'; got {m!r}")
        try:
            return self._template.render(
                messages=list(messages), add_generation_prompt=add_generation_prompt, **variables
            )
        except UserError:
            raise
        except jinja2.TemplateError as e:
            raise UserError(f"the chat template failed on these messages: {e}") from None
