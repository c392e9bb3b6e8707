"""The public API and CLI on the embedded default model: exact greedy decoding against transformers."""

from __future__ import annotations

import json

import pytest
import torch

from paperclub.cli import main
from paperclub.engine import LLM, SamplingParams

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Write a Python function that reverses a string."}],
    [{"role": "user", "content": "Solve: 12 * 7 + 5 = ?"}],
    "def quicksort(arr):\n    ",
    "Once upon a time, in a village by the sea,",
    "The derivative of x^3 is",
]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def llm_fp32(default_model_dir):
    return LLM(model=str(default_model_dir), dtype="float32", device="cpu")


def test_greedy_fp32_is_token_identical_to_transformers(llm_fp32, default_model_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(default_model_dir), dtype=torch.float32).eval()
    outs = llm_fp32.generate(PROMPTS, SamplingParams(max_tokens=NEW_TOKENS))
    for prompt, out in zip(PROMPTS, outs, strict=True):
        ids = torch.tensor([llm_fp32.encode(prompt)])
        with torch.no_grad():
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                              eos_token_id=sorted(llm_fp32.engine.eos_token_ids), pad_token_id=2)
        assert out.token_ids == ref[0, ids.shape[1]:].tolist(), f"differs from transformers for {prompt!r}"


def test_stream_equals_generate_and_text_is_decoded(llm_fp32):
    prompt = PROMPTS[0]
    pieces = list(llm_fp32.stream(prompt, SamplingParams(max_tokens=16)))
    (out,) = llm_fp32.generate([prompt], SamplingParams(max_tokens=16))
    assert "".join(pieces) == out.text == llm_fp32.tokenizer.decode(out.token_ids, skip_special_tokens=True)
    assert "Paris" in out.text
    assert out.metrics["generated_tokens"] == len(out.token_ids) and out.metrics["tokens_per_s"] > 0


def test_stop_string_truncates_text(llm_fp32):
    (out,) = llm_fp32.generate(["Count: 1, 2, 3,"], SamplingParams(max_tokens=30, stop=[" 6"]))
    assert out.finish_reason == "stop" and " 6" not in out.text and out.text.rstrip().endswith("5,")


def test_cli_generate_jsonl_contract(tmp_path, default_model_dir, capsys):
    prompts = tmp_path / "p.jsonl"
    lines = [{"prompt": "The capital of Italy is"}, {"messages": [{"role": "user", "content": "Say hi."}]}]
    prompts.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out.json"
    rc = main(["generate", "--model", str(default_model_dir), "--prompts", str(prompts), "--max-new-tokens", "8",
               "--dtype", "float32", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["target"] == str(default_model_dir) and data["tokens_per_s"] > 0
    for o in data["outputs"]:  # each stopped for the reason it gives
        assert o["finish_reason"] in ("length", "stop")
        assert len(o["token_ids"]) == 8 if o["finish_reason"] == "length" else 0 < len(o["token_ids"]) <= 8
    assert "Rome" in data["outputs"][0]["text"] and data["outputs"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "ok"}\nnot json\n', "p.jsonl:2: not valid JSON"),
    ('{"text": "x"}\n', 'expected {"prompt": "..."}'),
    ('{"messages": [{"role": "user"}]}\n', 'string "role" and "content"'),
])
def test_cli_malformed_jsonl_is_one_line_exit_2(tmp_path, capsys, content, message):
    p = tmp_path / "p.jsonl"
    p.write_text(content)
    assert main(["generate", "--prompts", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1"], "--temperature must be"),  # messages name the flag typed
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--model", "/nonexistent/model"], "not found"),
    (["--mode", "ssd", "--saguaro-c", "1.5"], "--saguaro-c must be in (0, 1)"),
    (["--mode", "ssd", "--target-threads", "0"], "--target-threads must be an integer >= 1"),
    (["--fanout-size", "0"], "--fanout-size must be an integer >= 1"),
])
def test_cli_bad_arguments_are_one_line_exit_2(capsys, args, message):
    assert main(["generate", "hello", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_cli_prompt_longer_than_context(default_model_dir, capsys):
    long = "word " * 9000
    assert main(["generate", long, "--model", str(default_model_dir), "--dtype", "float32"]) == 2
    assert "context window" in capsys.readouterr().err


def test_cli_ssd_options_reach_the_config():
    from paperclub.cli import build_parser
    from paperclub.engine.cli import ssd_config

    args = build_parser().parse_args(
        ["generate", "hi", "--mode", "ssd", "--k", "3", "--fanout", "geometric", "--fanout-size", "2",
         "--miss-fanout", "5", "--fallback", "fast", "--saguaro-c", "0.5", "--draft-threads", "2",
         "--target-threads", "1", "--dtype", "float32"])
    c = ssd_config(args)
    assert (c.k, c.fanout, c.fanout_size, c.miss_fanout, c.fallback, c.saguaro_c) == (3, "geometric", 2, 5, "fast", 0.5)
    assert (c.draft_threads, c.target_threads, c.draft_dtype) == (2, 1, torch.float32)
