"""The command line's messages name what the user typed, and `chat` survives a message that does not fit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from paperclub.cli import main
from paperclub.engine import LLM


@pytest.mark.parametrize("argv, flag", [
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--top-p", "0"], "--top-p"),
    (["--top-k", "-1"], "--top-k"),
    (["--temperature", "-1"], "--temperature"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_bad_flags_are_named_as_typed(capsys, tmp_path, argv, flag):
    assert main(["generate", "--model", str(tmp_path / "no-model"), *argv, "hi"]) == 2  # refused before loading
    err = capsys.readouterr().err.strip()
    assert flag in err and "\n" not in err


def test_a_missing_draft_is_named(default_model_dir, capsys, tmp_path):
    assert main(["generate", "--model", str(default_model_dir), "--mode", "sd", "--draft", "no-such-draft",
                 "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert "draft model 'no-such-draft' not found" in err and "\n" not in err


def test_chat_survives_a_message_that_does_not_fit(default_model_dir):
    lines = "word " * 9000 + "\nSay hi.\n"
    r = subprocess.run([sys.executable, "-m", "paperclub.cli", "chat", "--model", str(default_model_dir),
                        "--max-new-tokens", "8"], input=lines, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "does not fit" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout.count("assistant>") == 1  # the second message got its answer


def test_chat_history_is_trimmed_to_the_context(default_model_dir):
    from paperclub.engine.cli import fit_history

    llm = LLM(model=str(default_model_dir), max_model_len=256)
    turn = "tell me about the sea " * 8  # about 40 tokens
    history = [{"role": "system", "content": "Be brief."}]
    for _ in range(4):
        history += [{"role": "user", "content": turn}, {"role": "assistant", "content": turn}]
    history.append({"role": "user", "content": "And now?"})
    kept, dropped = fit_history(llm, history, 32)
    assert kept[0] == history[0] and kept[1]["role"] == "user" and kept[-1] == history[-1]
    assert dropped > 0 and len(kept) == len(history) - dropped
    assert len(llm.encode(kept)) + 32 <= llm.engine.room_for(0)
    longer = fit_history(llm, history[:1] + history[1 + dropped - 2:], 32)[0]  # two more messages do not fit
    assert longer == kept
    llm.close()
