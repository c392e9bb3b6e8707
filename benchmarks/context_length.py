"""Decode speed against context length: one bf16 decode step of the default model at batch 1 (and optionally
batch 16) after prompts of 100 to 4000 tokens, and the time of a batched prefill of prompts of different lengths.

    .venv/bin/python benchmarks/context_length.py --repeats 3 --json benchmarks/results/context_length.json

A decode step reads every weight once (the same at any context) plus the K/V of the whole context (3 KV heads x 64
x 2 x 2 bytes x 30 layers = 23 kB per token for SmolLM2-135M), so the step grows with the context; how fast it
grows is the attention kernel's efficiency. Run it against an older checkout with PYTHONPATH=<old>/src to compare.
`--attention` times the attention kernel alone instead (one layer's shapes, random K/V).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from paperclub.atomic import write_json
from paperclub.engine import LLM, SamplingParams


def decode_step_ms(llm: LLM, context: int, batch: int, steps: int = 24) -> float:
    """Median engine step (ms) of `batch` sequences decoding after `context`-token prompts."""
    engine = llm.engine
    prompt = [(i * 7919) % 40000 + 100 for i in range(context)]
    for _ in range(batch):
        engine.add_request(prompt, SamplingParams(max_tokens=steps + 1, ignore_eos=True))
    engine.step()  # prefill
    times = []
    while engine.has_unfinished():
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def ragged_prefill_ms(llm: LLM, lengths: list[int]) -> float:
    """One batched prefill of prompts of the given lengths (ms)."""
    engine = llm.engine
    seqs = [engine.add_request([(7 * i + j) % 40000 + 100 for j in range(n)], SamplingParams(max_tokens=1))
            for i, n in enumerate(lengths)]
    t = time.perf_counter()
    engine.step()
    elapsed = time.perf_counter() - t
    for s in seqs:
        engine.abort(s)
    return elapsed * 1e3


ATTENTION_CASES = {  # name: (rows, queries per row, keys)
    "decode, 1 row, 4000 keys": (1, 1, 4000),
    "decode, 1 row, 1000 keys": (1, 1, 1000),
    "decode, 1 row, 100 keys": (1, 1, 100),
    "decode, 16 rows, 150 keys": (16, 1, 150),
    "decode, 16 rows, 600 keys": (16, 1, 600),
    "verification, 1 row x 6 queries, 1000 keys": (1, 6, 1000),
}


def attention_us(rows: int, queries: int, keys: int, calls: int = 40) -> float:
    """One layer's attention of SmolLM2-135M (9 query heads, 3 KV heads of 64, bf16) on the CPU kernel: the 25th
    percentile of `calls` calls, in microseconds."""
    from paperclub.nn.cpu_kernels import cpu_kernel

    kernels = cpu_kernel()
    g = torch.Generator().manual_seed(0)
    cap = (keys + 127) // 128 * 128
    kc = torch.randn(rows, 3, cap, 64, generator=g).bfloat16()
    vc = torch.randn(rows, 3, cap, 64, generator=g).bfloat16()
    q = torch.randn(rows, queries, 9, 64, generator=g).bfloat16()
    slots = torch.arange(rows)
    mask = None if rows == queries == 1 else torch.ones(rows, queries, keys, dtype=torch.bool)
    kernels.attention(q, kc, vc, slots, keys, mask, 0.125)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        kernels.attention(q, kc, vc, slots, keys, mask, 0.125)
        times.append(time.perf_counter() - t)
    return sorted(times)[calls // 4] * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="100,1000,2000,4000")
    ap.add_argument("--batch16", action="store_true", help="also batch 16 (at contexts up to 1000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attention", action="store_true", help="time the attention kernel alone")
    ap.add_argument("--json", default="benchmarks/results/context_length.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.attention:
        result = {name: [attention_us(*case) for _ in range(args.repeats)] for name, case in ATTENTION_CASES.items()}
        write_json(args.json, {"settings": {"threads": args.threads, "date": time.strftime("%Y-%m-%d")},
                               "attention_us": result})
        for name, runs in result.items():
            print(f"{name}: " + ", ".join(f"{t:.0f}" for t in runs) + " us")
        return
    contexts = [int(c) for c in args.contexts.split(",")]
    llm = LLM(dtype="bfloat16", mode="ar", max_model_len=max(contexts) + 64)
    decode_step_ms(llm, 50, 1, steps=4)  # warm-up
    ragged = [321, 38, 37, 115, 51, 150, 85, 37, 44, 44, 53, 44, 42, 38, 50, 125]  # HumanEval-like spread
    runs: dict[str, list[float]] = {}
    for r in range(args.repeats):
        for c in contexts:
            runs.setdefault(f"batch1_ctx{c}_ms", []).append(decode_step_ms(llm, c, 1))
            if args.batch16 and c <= 1000:
                runs.setdefault(f"batch16_ctx{c}_ms", []).append(decode_step_ms(llm, c, 16))
        runs.setdefault("ragged_prefill_16_ms", []).append(ragged_prefill_ms(llm, ragged))
        print(f"run {r}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()))
    result = {
        "settings": {"threads": args.threads, "repeats": args.repeats, "dtype": "bfloat16",
                     "date": time.strftime("%Y-%m-%d"), "ragged_prefill_lengths": ragged},
        "median": {k: statistics.median(v) for k, v in runs.items()},
        "runs": runs,
    }
    write_json(args.json, result)
    print(json.dumps(result["median"], indent=2))


if __name__ == "__main__":
    main()
