"""Prompts the target writes for itself, to widen a draft's training data (Magpie, Xu et al., 2024).

A chat model that is given its chat template only up to the start of a user turn writes a user turn: a question
or task drawn from what it was tuned on. Its answers to those prompts are the text a draft has to predict when
users bring their own prompts, so they make teacher data that no hand-written prompt list limits. Nothing is
downloaded; the target is the only source.

`self_prompts` samples user turns in batches, keeps the finished, new and clean ones (`PromptFilter`: at least a few
words, no broken UTF-8, no repeat of an earlier prompt, and no run of `overlap_words` words shared with a held-out
text, so evaluation prompts cannot leak into training), and stores them atomically after every batch, so a killed
run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from paperclub.atomic import atomic_path
from paperclub.errors import UserError

log = logging.getLogger(__name__)

Chat = list[dict[str, str]]
_SENTINEL = "\x00PAPERCLUB_USER_TURN\x00"
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class SelfPromptConfig:
    temperature: float = 1.0
    top_p: float = 0.95
    max_tokens: int = 96  # a user turn not finished within this many tokens is dropped
    min_words: int = 4
    overlap_words: int = 8  # a prompt sharing this many consecutive words with a held-out text is dropped
    batch: int = 64


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


@dataclass
class PromptFilter:
    """Which sampled user turns to keep. `held_out`: texts (evaluation prompts) no kept prompt may overlap."""

    held_out: list[str]
    min_words: int = 4
    overlap_words: int = 8
    seen: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._held_ngrams = set().union(*(word_ngrams(t, self.overlap_words) for t in self.held_out))
        self._held_whole = {" ".join(words(t)) for t in self.held_out}

    def keep(self, text: str) -> bool:
        text = text.strip()
        key = " ".join(words(text))
        if len(key.split()) < self.min_words or "\ufffd" in text or key in self.seen:
            return False
        if key in self._held_whole or word_ngrams(text, self.overlap_words) & self._held_ngrams:
            return False
        self.seen.add(key)
        return True


def pre_query_ids(llm: Any) -> list[int]:
    """Token ids of the chat template up to where a user turn's text starts (the model's default system prompt
    included, as when a user's prompt is rendered)."""
    tok = llm.tokenizer
    if getattr(tok, "chat_template", None) is None:
        raise UserError("--self-prompts needs a chat model: this target has no chat template")
    text = tok.apply_chat_template([{"role": "user", "content": _SENTINEL}], add_generation_prompt=False)
    if _SENTINEL not in text:
        raise UserError("--self-prompts needs a chat template that renders the user's text")
    prefix = text.split(_SENTINEL)[0]
    ids = tok.encode(prefix, add_special_tokens=False)
    if not ids:
        raise UserError("--self-prompts: the chat template renders nothing before the user's text")
    return ids


def self_prompts(llm: Any, n: int, path: Path, seed: int, held_out: list[str],
                 cfg: SelfPromptConfig = SelfPromptConfig()) -> list[Chat]:
    """`n` user prompts written by the target (`llm`, an engine `LLM` of a chat model), as chats; resumable from
    `path` (a JSON state file, rewritten atomically after each batch)."""
    from paperclub.engine.sampling import SamplingParams

    if n < 1:
        raise UserError(f"--self-prompts must be >= 1, got {n}")
    state: dict[str, Any] = {"seed": seed, "next_sample": 0, "prompts": []}
    if path.is_file():
        state = json.loads(path.read_text())
        if state.get("seed") != seed:
            raise UserError(f"{path} was written with seed {state.get('seed')}, not {seed}: start over with --force")
    flt = PromptFilter(held_out, cfg.min_words, cfg.overlap_words)
    for p in state["prompts"]:
        flt.keep(p)
    prefix = pre_query_ids(llm)
    stop = set(llm.model.cfg.eos_token_ids) | set(llm.tokenizer.eos_token_ids)
    tries = 0
    with tqdm(total=n, initial=min(n, len(state["prompts"])), desc="self prompts", unit="prompt") as bar:
        while len(state["prompts"]) < n:
            first = state["next_sample"]
            params = [SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                     seed=seed * 1_000_003 + first + i) for i in range(cfg.batch)]
            outs = llm.generate([prefix] * cfg.batch, params)
            kept = 0
            for o in outs:
                if not (o.token_ids and o.token_ids[-1] in stop) or len(state["prompts"]) >= n:
                    continue  # unfinished within max_tokens, or enough
                text = llm.tokenizer.decode(o.token_ids[:-1]).strip()
                if flt.keep(text):
                    state["prompts"].append(text)
                    kept += 1
            state["next_sample"] = first + cfg.batch
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(state, ensure_ascii=False))
            bar.update(kept)
            tries = tries + 1 if kept == 0 else 0
            if tries >= 10:
                raise UserError(f"--self-prompts: 10 batches in a row gave no usable prompt ({len(state['prompts'])} "
                                f"of {n} so far); the model may not write user turns")
    log.info("self prompts: kept %d of %d sampled user turns", n, state["next_sample"])
    return [[{"role": "user", "content": p}] for p in state["prompts"][:n]]
