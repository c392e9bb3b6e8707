"""The engine alone in a server's steady state: B streams of chat prompts, 128 tokens each (EOS ends one early), a
finished stream replaced at once, as `paperclub loadtest` does against `paperclub serve`. Prints, per B, the median
decode step, the share of time in prefill steps and tokens/s; then where a B-row decode step spends its time
(the decoder blocks, the LM head, the attention metadata), from one fixed state, medians of interleaved calls.

    .venv/bin/python benchmarks/engine_steady_state.py [--batches 1,16] [--seconds 25] [--prefix-cache-mb 0] \\
        [--json OUT.json]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from paperclub.atomic import write_json
from paperclub.device import cpu_model
from paperclub.engine import LLM, SamplingParams
from paperclub.engine.kv_cache import causal_meta
from paperclub.serve.loadtest import LoadTest, load_prompts


def chat_prompts(llm: LLM, n: int) -> list[list[int]]:
    prompts = load_prompts(LoadTest("http://127.0.0.1:1/v1", 1, 1, 1, num_prompts=n))
    return [llm.encode(p) for p in prompts]


def steady_state(batch: int, seconds: float, prefix_cache_mb: float) -> dict:
    llm = LLM(dtype="bfloat16", mode="ar", max_num_seqs=batch, prefix_cache_mb=prefix_cache_mb)
    engine, prompts = llm.engine, chat_prompts(llm, 16)
    order = itertools.cycle(range(len(prompts)))
    decode, prefill, tokens = [], [], 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        while len(engine.running) + len(engine.waiting) < batch:
            engine.add_request(prompts[next(order)], SamplingParams(max_tokens=128))
        admitting = bool(engine.waiting)
        t = time.perf_counter()
        tokens += len(engine.step())
        (prefill if admitting else decode).append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    return {"batch": batch, "decode_step_ms": statistics.median(decode) * 1e3, "decode_steps": len(decode),
            "prefill_steps": len(prefill), "prefill_share": sum(prefill) / wall, "tokens_per_s": tokens / wall}


def breakdown(batch: int, context: int, repeats: int = 40) -> dict:
    """One B-row decode step taken apart, after `context` tokens of decoding past the prompts."""
    llm = LLM(dtype="bfloat16", mode="ar", max_num_seqs=batch)
    engine = llm.engine
    for p in chat_prompts(llm, batch):
        engine.add_request(p, SamplingParams(max_tokens=10**6, ignore_eos=True))
    for _ in range(context + 1):
        engine.step()
    runner, model = engine.decoder.runner, engine.decoder.runner.model
    seqs = list(engine.running)
    slots, starts = [s.slot for s in seqs], [s.num_cached for s in seqs]
    chunks = [[s.output_ids[-1]] for s in seqs]
    times: dict[str, list[float]] = {"step (append)": [], "blocks": [], "lm_head": [], "metadata": []}
    with torch.inference_mode():
        meta, positions = causal_meta(slots, starts, [1] * len(seqs), runner.device, runner.cfg.sliding_window)
        tokens = torch.tensor(chunks)
        hidden = model(tokens, positions, runner.cache.k, runner.cache.v, meta)[:, -1].contiguous()
        calls = {"step (append)": lambda: runner.append(slots, starts, chunks, True),
                 "blocks": lambda: model(tokens, positions, runner.cache.k, runner.cache.v, meta),
                 "lm_head": lambda: model.logits(hidden),
                 "metadata": lambda: causal_meta(slots, starts, [1] * len(seqs), runner.device,
                                                 runner.cfg.sliding_window)}
        for _ in range(repeats):
            for name, call in calls.items():
                t = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t)
    return {"batch": batch, "mean_context": sum(starts) / len(starts),
            **{f"{name}_ms": statistics.median(v) * 1e3 for name, v in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--seconds", type=float, default=25)
    ap.add_argument("--prefix-cache-mb", type=float, default=0)
    ap.add_argument("--breakdown-context", type=int, default=70, help="decode steps before taking a step apart")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    result = {"cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
              "prefix_cache_mb": args.prefix_cache_mb, "steady": [], "breakdown": None}
    for b in batches:
        r = steady_state(b, args.seconds, args.prefix_cache_mb)
        print(f"B={b}: decode step {r['decode_step_ms']:.1f} ms, prefill {100 * r['prefill_share']:.0f}% of the "
              f"time, {r['tokens_per_s']:.1f} tok/s", flush=True)
        result["steady"].append(r)
    result["breakdown"] = breakdown(max(batches), args.breakdown_context)
    print("  ".join(f"{k} {v:.2f}" for k, v in result["breakdown"].items()), flush=True)
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
