"""Per-category evaluation prompts for speculative-decoding acceptance, `data/spec_eval/<category>.jsonl`.

Twelve prompts per category, none drawn from the draft's training pool (`data/distill_*.jsonl`): see
`data/spec_eval/README.md` for what each file holds and where its texts come from. The files are in the format
`paperclub bench --prompts` reads ({"messages": [...]} lines are chat-templated, {"prompt": "..."} lines are raw
continuations); raw and summarize lines also carry a "source" field, which the loader ignores.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from paperclub.engine.cli import read_prompts_jsonl
from paperclub.errors import UserError

CATEGORIES = ("chat", "code", "math", "raw", "summarize", "non_english")


def category_path(name: str) -> Path:
    """The path of a category's prompt file, `data/spec_eval/<name>.jsonl`."""
    if name not in CATEGORIES:
        raise UserError(f"unknown prompt category {name!r}: use one of {', '.join(CATEGORIES)}")
    return Path(str(resources.files("paperclub.distill").joinpath("data", "spec_eval", f"{name}.jsonl")))


def category_prompts(name: str) -> list[Any]:
    """A category's prompts as `paperclub bench` loads them: chat message lists, or raw text for "raw"."""
    return read_prompts_jsonl(str(category_path(name)))
