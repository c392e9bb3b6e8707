"""The per-category evaluation sets (`data/spec_eval/`): twelve prompts each that bench loads, none from the draft's
training pool, texts of the promised lengths. No model loads."""

from __future__ import annotations

import json
import re

import pytest

from paperclub.bench.bench import load_prompts
from paperclub.distill.categories import CATEGORIES, category_path, category_prompts
from paperclub.distill.dataset import prompt_set_path
from paperclub.errors import UserError

SUMMARIZE_PREFIX = "Summarize the following text in a few sentences:\n\n"


def text_of(prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def records(name: str) -> list[dict]:
    return [json.loads(line) for line in category_path(name).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def pool() -> list[str]:
    """Every prompt of the draft's training and held-out files, distill_*.jsonl."""
    files = sorted(prompt_set_path("distill_train").parent.glob("distill_*.jsonl"))
    assert len(files) >= 2
    return [text_of(json.loads(line).get("prompt") or json.loads(line)["messages"])
            for f in files for line in f.read_text().splitlines() if line.strip()]


def test_categories_are_the_six_of_the_issue():
    assert CATEGORIES == ("chat", "code", "math", "raw", "summarize", "non_english")


@pytest.mark.parametrize("name", CATEGORIES)
def test_each_category_has_twelve_prompts_that_bench_loads(name):
    prompts = category_prompts(name)
    assert len(prompts) == 12
    assert load_prompts(str(category_path(name)), 100) == prompts  # bench reads the file the same way
    if name == "raw":
        assert all(isinstance(p, str) for p in prompts)  # raw continuation: no chat template
    else:
        assert all(isinstance(p, list) and [m["role"] for m in p] == ["user"] for p in prompts)
    assert len({text_of(p) for p in prompts}) == 12


def test_no_prompt_repeats_across_categories():
    texts = [text_of(p).removeprefix(SUMMARIZE_PREFIX) for name in CATEGORIES for p in category_prompts(name)]
    assert len(set(texts)) == len(texts)
    assert len({t.strip()[:60] for t in texts}) == len(texts)


def test_no_prompt_comes_from_the_training_pool(pool):
    exact, heads = set(pool), {t[:60] for t in pool}
    # near-exact: any shared run of 10 words (templates, HumanEval docstrings, stdlib docstrings would all show)
    shingles = set()
    for t in pool:
        w = words(t)
        shingles.update(tuple(w[i:i + 10]) for i in range(len(w) - 9))
    for name in CATEGORIES:
        for p in category_prompts(name):
            t = text_of(p)
            assert t not in exact, (name, t[:80])
            assert t[:60] not in heads, (name, t[:80])
            w = words(t)
            shared = [g for g in (tuple(w[i:i + 10]) for i in range(len(w) - 9)) if g in shingles]
            assert not shared, (name, t[:80], " ".join(shared[0]))


def test_raw_texts_are_80_to_250_words_with_a_source():
    for r in records("raw"):
        assert 80 <= len(r["prompt"].split()) <= 250, r["source"]
        assert r["source"]


def test_summarize_texts_are_600_to_1500_words_with_a_source():
    raw_sources = {r["source"] for r in records("raw")}
    for r in records("summarize"):
        content = r["messages"][0]["content"]
        assert content.startswith(SUMMARIZE_PREFIX)
        assert 600 <= len(content[len(SUMMARIZE_PREFIX):].split()) <= 1500, r["source"]
        assert r["source"] and r["source"] not in raw_sources


def test_unknown_category_names_the_valid_ones():
    with pytest.raises(UserError, match="chat, code, math, raw, summarize, non_english"):
        category_path("poetry")
    with pytest.raises(UserError, match="unknown prompt category"):
        category_prompts("Chat")
