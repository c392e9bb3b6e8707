"""`paperclub distill --self-prompts`: user turns the target writes for itself, filtered, decontaminated, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paperclub.cli import main
from paperclub.distill.self_prompts import PromptFilter, SelfPromptConfig, pre_query_ids, self_prompts
from paperclub.errors import UserError
from tests.distill.test_train import DISTILL, make_target, write_prompts

# word-level tokens only: the tiny tokenizer knows w0..w59 and <eos>
CHAT_TEMPLATE = ("{% for m in messages %}w0 {{ m['content'] }} <eos> {% endfor %}"
                 "{% if add_generation_prompt %}w1 {% endif %}")


@pytest.fixture(scope="module")
def chat_target(tmp_path_factory):
    path = make_target(tmp_path_factory.mktemp("tiny-chat") / "target", seed=3)
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "chat_template": CHAT_TEMPLATE}))
    return path


def tiny_llm(path: Path):
    from paperclub.engine.llm import LLM

    return LLM(model=str(path), device="cpu", dtype="float32", max_num_seqs=16, max_model_len=256)


def test_filter_keeps_new_prompts_and_drops_repeats_short_broken_and_held_out_overlaps():
    held = "Please explain how a grease stain comes out of a white cotton shirt after the dryer"
    f = PromptFilter([held, "What is a Roth IRA"], min_words=4, overlap_words=8)
    assert f.keep("How do tides work on other planets?")
    assert not f.keep("  how do TIDES work on other planets  ")  # a repeat up to case, spacing and punctuation
    assert not f.keep("Tides, how?")  # 2 words
    assert not f.keep("What is a Roth IRA?")  # a held-out prompt itself
    assert not f.keep("Tell me how a grease stain comes out of a white cotton shirt, quickly")  # 8 shared words
    assert f.keep("Tell me if a grease stain comes out of a wool coat")  # 7 shared words
    assert not f.keep("Why is the sky blue \ufffd today")  # broken UTF-8 in the sample


def test_pre_query_ids_are_the_template_up_to_the_users_text(chat_target):
    llm = tiny_llm(chat_target)
    assert llm.tokenizer.decode(pre_query_ids(llm)).split() == ["w0"]


def test_self_prompts_are_distinct_finished_user_turns_and_resume_without_sampling_again(chat_target, tmp_path):
    llm = tiny_llm(chat_target)
    cfg = SelfPromptConfig(max_tokens=40, batch=16, min_words=3)
    state = tmp_path / "self_prompts.json"
    first = self_prompts(llm, 12, state, seed=1, held_out=[], cfg=cfg)
    assert len(first) == 12 and all(c[0]["role"] == "user" for c in first)
    texts = [c[0]["content"] for c in first]
    assert len({" ".join(t.split()) for t in texts}) == 12
    assert all(len(t.split()) >= 3 and "<eos>" not in t for t in texts)
    saved = json.loads(state.read_text())
    assert saved["prompts"][:12] == texts and saved["next_sample"] % 16 == 0

    def no_sampling(*_a, **_k):
        raise AssertionError("resumed run sampled again")

    llm.generate = no_sampling
    assert self_prompts(llm, 12, state, seed=1, held_out=[], cfg=cfg) == first  # all there: nothing sampled
    with pytest.raises(UserError, match="seed 1, not 2"):
        self_prompts(llm, 12, state, seed=2, held_out=[], cfg=cfg)


def test_self_prompts_never_keep_a_held_out_text(chat_target, tmp_path):
    llm = tiny_llm(chat_target)
    cfg = SelfPromptConfig(max_tokens=40, batch=16, min_words=3, overlap_words=3)
    free = self_prompts(llm, 10, tmp_path / "a.json", seed=4, held_out=[], cfg=cfg)
    held = [free[0][0]["content"], free[5][0]["content"]]
    again = self_prompts(llm, 10, tmp_path / "b.json", seed=4, held_out=held, cfg=cfg)
    shared = {tuple(w[i:i + 3]) for h in held for w in [h.split()] for i in range(len(w) - 2)}
    for c in again:
        w = c[0]["content"].split()
        assert not shared & {tuple(w[i:i + 3]) for i in range(len(w) - 2)}


def test_a_model_without_a_chat_template_is_a_one_line_error(tmp_path, capsys):
    target = make_target(tmp_path / "plain")
    prompts = write_prompts(tmp_path / "p.jsonl")
    assert main(["distill", "--target", str(target), "--out", str(tmp_path / "x"), "--prompts", str(prompts),
                 *DISTILL, "--steps", "1", "--self-prompts", "4"]) == 2
    err = capsys.readouterr().err
    assert "--self-prompts needs a chat" in err and err.count("\n") == 1
    assert main(["distill", "--target", str(target), "--out", str(tmp_path / "y"), "--self-prompts", "-1"]) == 2
    assert "--self-prompts must be >= 0" in capsys.readouterr().err


def test_distill_trains_on_self_prompts_and_a_reuse_links_their_data(chat_target, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", n=8)
    out = tmp_path / "run"
    assert main(["distill", "--target", str(chat_target), "--out", str(out), "--prompts", str(prompts), *DISTILL,
                 "--steps", "2", "--self-prompts", "6", "--eval-prompts", "1"]) == 0
    chunks = sorted((out / "work" / "self").glob("chunk-*.pt"))
    assert chunks and len(json.loads((out / "work" / "self_prompts.json").read_text())["prompts"]) == 6
    again = tmp_path / "again"
    assert main(["distill", "--target", str(chat_target), "--out", str(again), "--prompts", str(prompts), *DISTILL,
                 "--steps", "1", "--eval-prompts", "1", "--reuse-data", str(out)]) == 0
    assert len(list((again / "work" / "reused-extra").glob("chunk-*.pt"))) == len(chunks)
