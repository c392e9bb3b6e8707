"""`paperclub bench`: the JSON contract end to end on tiny settings, greedy agreement and mismatch reports, the
transformers twin of our draft, the BF16 GGUF writer, bad input, the plot; llama.cpp only where it is installed."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from paperclub.bench.bench import add_margins, find_mismatches, first_difference
from paperclub.bench.peers import LLAMACPP_ENV
from paperclub.cli import main
from paperclub.models.gguf_write import read_gguf_bf16_bits, write_gguf

pytest.importorskip("transformers")

SYSTEM_KEYS = {"tokens_per_s", "tokens_per_s_runs", "acceptance_rate", "mean_acceptance_length", "num_drafts",
               "num_draft_tokens", "num_accepted_tokens", "num_accepted_tokens_per_pos", "acceptance_rate_per_pos",
               "cache_hit_rate", "outputs"}
PNG = b"\x89PNG"


def write_prompts(path, prompts):
    path.write_text("\n".join(json.dumps(p) for p in prompts) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, default_model_dir):
    tmp = tmp_path_factory.mktemp("bench")
    prompts = write_prompts(tmp / "p.jsonl", [{"messages": [{"role": "user", "content": "What is 2 + 2?"}]},
                                              {"prompt": "def add(a, b):\n    "}])
    out = tmp / "out.json"
    rc = main(["bench", "--model", str(default_model_dir), "--prompts", prompts, "--num-prompts", "2",
               "--modes", "ar,sd,ssd", "--peers", "hf,hf-assisted", "--k", "3", "--max-new-tokens", "6",
               "--batch-size", "1,2", "--temperature", "0", "--repeats", "1", "--json", str(out)])
    assert rc == 0
    return json.loads(out.read_text()), tmp


def test_bench_json_contract(bench_run):
    data, tmp = bench_run
    assert {"target", "draft", "machine", "settings", "results", "identical_greedy"} <= set(data)
    assert {"cpu", "cores", "torch", "threads", "date"} <= set(data["machine"])
    assert set(data["results"]) == {"ar", "sd", "ssd", "hf", "hf-assisted"}
    for name, r in data["results"].items():
        assert set(r) >= SYSTEM_KEYS, name
        assert r["tokens_per_s"] > 0 and len(r["tokens_per_s_runs"]) == 1
        assert [len(o) for o in r["outputs"]] == [6, 6], name  # EOS ignored: exactly N tokens
    assert data["results"]["ar"]["acceptance_rate"] is None and data["results"]["sd"]["cache_hit_rate"] is None
    sd = data["results"]["sd"]
    assert 0 <= sd["acceptance_rate"] <= 1
    assert sd["mean_acceptance_length"] == pytest.approx(1 + sd["num_accepted_tokens"] / sd["num_drafts"])
    assert sd["acceptance_rate"] == pytest.approx(sd["num_accepted_tokens"] / sd["num_draft_tokens"])
    assert sum(sd["num_accepted_tokens_per_pos"]) == sd["num_accepted_tokens"]
    assert 0 <= data["results"]["ssd"]["cache_hit_rate"] <= 1
    assert (tmp / "out.png").read_bytes()[:4] == PNG  # the plot lands next to the JSON


def test_bench_multi_config_layout_and_batch1_only_peers(bench_run):
    data, _ = bench_run
    assert [(c["batch_size"], c["temperature"]) for c in data["configs"]] == [(1, 0.0), (2, 0.0)]
    assert data["configs"][0]["results"] == data["results"]
    b2 = data["configs"][1]
    assert "hf-assisted" not in b2["results"] and "batch size 1" in b2["skipped"]["hf-assisted"]
    assert data["identical_greedy"] == all(c["identical_greedy"] for c in data["configs"])


def test_bench_modes_are_token_identical_when_greedy(bench_run):
    data, _ = bench_run
    for c in data["configs"]:
        outs = [c["results"][m]["outputs"] for m in ("ar", "sd", "ssd")]
        assert outs[0] == outs[1] == outs[2]
        listed = {m["system"] for m in c["mismatches"]}
        assert not listed & {"sd", "ssd"}
        for m in c["mismatches"]:  # a peer may differ only where the target's logits (nearly) tie
            assert abs(m["logit_margin"]) < 0.5, m


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


def test_mismatches_say_where_and_by_how_much():
    outputs = {"ar": [[5, 6, 7], [1, 2]], "sd": [[5, 6, 7], [1, 2]], "peer": [[5, 9, 7], [1, 2]]}
    prompts = [[100, 101], [102]]
    mismatches = find_mismatches(outputs, "ar")
    assert mismatches == [{"system": "peer", "reference": "ar", "prompt": 0, "index": 1, "reference_token": 6,
                           "token": 9}]
    seen = []

    def logits_fn(ids):
        seen.append(ids)
        x = torch.zeros(16)
        x[6], x[9] = 3.0, 3.0  # an exact tie
        return x

    add_margins(mismatches, prompts, outputs, logits_fn)
    assert seen == [[100, 101, 5]]  # the prompt plus the common prefix
    m = mismatches[0]
    assert m["logit_margin"] == 0.0 and m["tie"] and m["top2_gap"] == 0.0
    assert m["bf16_spacing"] == 2.0 ** -6  # bf16 values in [2, 4) are 1/64 apart


def test_hf_assisted_draft_computes_our_draft(default_model_dir):
    from paperclub.bench.peers import hf_draft
    from paperclub.engine.runner import ModelRunner
    from paperclub.models.draft import default_draft_dir, load_draft
    from paperclub.models.loader import load_model

    target = load_model(default_model_dir, torch.device("cpu"), torch.float32, max_positions=None)
    draft = load_draft(default_draft_dir(), target, "cpu", torch.float32)
    runner = ModelRunner(draft, 256)
    runner.reserve(1, 64)
    ids = [1, 504, 3458, 282, 4649, 314, 3767, 30, 2, 198, 45, 67]
    ours = runner.append([runner.cache.allocate()], [0], [ids], False)[0]
    with torch.no_grad():
        theirs = hf_draft(default_draft_dir(), target.embed.weight, torch.float32)(torch.tensor([ids])).logits[0]
    finite = torch.isfinite(ours)
    assert torch.equal(finite, torch.isfinite(theirs))  # -inf outside the draft's vocabulary, in both
    assert (ours[finite] - theirs[finite].float()).abs().max() < 1e-4


def test_gguf_writer_round_trips_bf16_bits(tmp_path):
    from paperclub.models.gguf_write import bf16_bits

    w = torch.randn(6, 32)
    norm = torch.rand(32) + 0.5
    tensors = {"blk.0.attn_q.weight": (bf16_bits(w), False), "output_norm.weight": (bf16_bits(norm), True)}
    path = tmp_path / "t.gguf"
    write_gguf(path, None, tensors)
    back = read_gguf_bf16_bits(path)
    assert set(back) == set(tensors)
    for name, (bits, _) in tensors.items():
        assert np.array_equal(back[name], bits), name
    assert torch.equal(torch.from_numpy(back["blk.0.attn_q.weight"].view(np.int16).copy()).view(torch.bfloat16),
                       w.to(torch.bfloat16))


@pytest.mark.parametrize("argv, message", [
    (["--modes", "ar,fast"], "unknown mode 'fast'"),
    (["--peers", "vllm"], "unknown peer 'vllm'"),
    (["--prompts", "/nonexistent/p.jsonl"], "no such file"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--batch-size", "1,x"], "comma list of ints"),
    (["--peers", "llamacpp"], LLAMACPP_ENV),
])
def test_bench_bad_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.delenv(LLAMACPP_ENV, raising=False)
    try:
        rc = main(["bench", "--json", str(tmp_path / "o.json"), *argv])
    except SystemExit as e:  # argparse's own errors (bad list syntax) exit from the parser
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "o.json").exists()


def fake_result(tps, **extra):
    base = {"tokens_per_s": tps, "tokens_per_s_runs": [tps], "acceptance_rate": None, "mean_acceptance_length": None,
            "cache_hit_rate": None, "outputs": [[1, 2]]}
    return base | extra


def test_bench_plot_merges_files(tmp_path):
    configs = [{"batch_size": b, "temperature": t, "identical_greedy": None, "mismatches": [], "skipped": {},
                "results": {"ar": fake_result(40.0 * b), "hf": fake_result(25.0 * b),
                            "ssd": fake_result(30.0, acceptance_rate=0.3, mean_acceptance_length=2.0,
                                               cache_hit_rate=0.6)}}
               for b in (1, 4) for t in (0.0, 0.7)]
    a = {"target": "/m/SmolLM2", "settings": {"num_prompts": 2, "max_new_tokens": 8, "batch_size": 1,
                                              "temperature": 0.0}, "machine": {"cpu": "x"},
         "results": configs[0]["results"], "configs": configs[:2]}
    b = a | {"configs": configs[2:]}
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for p, d in zip(paths, (a, b), strict=True):
        p.write_text(json.dumps(d))
    out = tmp_path / "fig.png"
    assert main(["bench-plot", *map(str, paths), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == PNG
    assert main(["bench-plot", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    from paperclub.bench.cli import merged_configs

    newer = b | {"configs": [configs[0] | {"results": {"ar": fake_result(99.0)}}]}
    merged = merged_configs([newer, a, b])  # overlapping (batch 1, T 0): the first file's figures win
    assert [(c["batch_size"], c["temperature"]) for c in merged] == [(1, 0.0), (4, 0.0), (1, 0.7), (4, 0.7)]
    assert merged[0]["results"]["ar"]["tokens_per_s"] == 99.0


@pytest.mark.skipif(not os.environ.get(LLAMACPP_ENV), reason=f"${LLAMACPP_ENV} not set (llama-cpp-python venv)")
def test_llamacpp_peer_runs_the_same_weights(tmp_path, default_model_dir):
    from paperclub.models.gguf_write import bf16_gguf_for, gguf_tensors

    path = bf16_gguf_for(default_model_dir)
    back = read_gguf_bf16_bits(path)
    for name, (bits, _) in gguf_tensors(default_model_dir).items():
        assert np.array_equal(back[name], bits), name
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "The capital of France is"}])
    out = tmp_path / "o.json"
    assert main(["bench", "--prompts", prompts, "--num-prompts", "1", "--modes", "ar", "--peers", "llamacpp",
                 "--max-new-tokens", "8", "--batch-size", "1,2", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["results"]["llamacpp"]["outputs"][0]) == 8
    assert "batch 1 only" in data["configs"][1]["skipped"]["llamacpp"]
    assert data["machine"]["llama_cpp_python"]


def test_bench_auto_mode_reports_what_auto_picked(default_model_dir, tmp_path, monkeypatch):
    """`--modes auto` times `LLM(mode="auto")` with the draft and writes its pick (here a stored one, so that no
    calibration runs); greedy outputs equal AR's."""
    from paperclub.speculative import auto

    monkeypatch.setattr(auto, "load", lambda key: auto.AutoChoice("sd", 3, None, "stored", {}, "ngram+draft"))
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "one two three one two three one two"}])
    out = tmp_path / "out.json"
    assert main(["bench", "--model", str(default_model_dir), "--prompts", prompts, "--num-prompts", "1",
                 "--modes", "ar,auto", "--peers", "", "--max-new-tokens", "8", "--batch-size", "1",
                 "--temperature", "0", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    picked = data["results"]["auto"]["auto_choice"]
    assert (picked["mode"], picked["k"], picked["drafter"]) == ("sd", 3, "ngram+draft")
    assert data["identical_greedy"] and data["results"]["auto"]["num_drafts"] > 0


def test_bench_predict_measure_models_prompt_lookup_with_its_measured_share(default_model_dir, tmp_path):
    """`--predict --measure`: the cost model's tokens/s beside the measured ones for AR, SD and SD with prompt
    lookup and the draft, whose draft share is the measured run's (rounds not drafted by prompt lookup)."""
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "red green blue red green blue red green blue red"}])
    out = tmp_path / "pred.json"
    assert main(["bench", "--predict", "--measure", "--model", str(default_model_dir), "--prompts", prompts,
                 "--num-prompts", "1", "--modes", "ar,sd,sd-ngram+draft", "--k", "3", "--max-new-tokens", "12",
                 "--batch-size", "1", "--temperature", "0", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    pred, measured = data["predicted"], data["measured"]["results"]
    assert set(pred) == {"ar", "sd", "sd-ngram+draft"}
    for r in pred.values():
        assert r["tokens_per_s"] > 0 and r["measured_tokens_per_s"] > 0
        assert r["error"] == pytest.approx(r["tokens_per_s"] / r["measured_tokens_per_s"] - 1)
    m = measured["sd-ngram+draft"]
    assert m["num_ngram_drafts"] > 0  # the prompt repeats itself: prompt lookup drafted
    assert pred["sd-ngram+draft"]["detail"]["draft_share"] == pytest.approx(1 - m["num_ngram_drafts"] / m["num_drafts"])
