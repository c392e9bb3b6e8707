"""Median engine step of the default model at 1, 5 and 16 rows per step (bf16, greedy, 2 threads).

    .venv/bin/python benchmarks/engine_step.py [--json OUT.json]

Prints one JSON line: the median step in ms per batch size and the first 32 greedy tokens of batch 1, so that two
builds (say, two kernel versions in alternating processes) can be compared on speed and checked for identical
output.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from paperclub.atomic import write_json
from paperclub.engine import LLM, SamplingParams

PROMPTS = [
    [{"role": "user", "content": "Describe how a bicycle works to a ten-year-old."}],
    [{"role": "user", "content": "Write a Python class for a stack with push, pop and peek."}],
    [{"role": "user", "content": "If a train travels 300 km in 2.5 hours, what is its average speed?"}],
    [{"role": "user", "content": "Write a short poem about autumn leaves."}],
]


def median_step_ms(llm: LLM, prompts, new_tokens: int) -> tuple[float, list[list[int]]]:
    engine = llm.engine
    seqs = [engine.add_request(llm.encode(p), SamplingParams(max_tokens=new_tokens, ignore_eos=True)) for p in prompts]
    steps = []
    while engine.has_unfinished():
        t = time.perf_counter()
        engine.step()
        steps.append(time.perf_counter() - t)
    return 1e3 * statistics.median(steps[2:]), [s.output_ids for s in seqs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args()
    torch.set_num_threads(2)
    llm = LLM(dtype="bfloat16", device="cpu", max_num_seqs=16)
    median_step_ms(llm, PROMPTS[:1], 8)  # warm-up
    result = {
        "batch1_ms": statistics.median(median_step_ms(llm, PROMPTS[i : i + 1], 64)[0] for i in range(4)),
        "batch5_ms": statistics.median(median_step_ms(llm, (PROMPTS * 2)[:5], 64)[0] for _ in range(2)),
        "batch16_ms": statistics.median(median_step_ms(llm, (PROMPTS * 4)[:16], 64)[0] for _ in range(2)),
        "greedy_tokens": median_step_ms(llm, PROMPTS[:1], 32)[1][0],
    }
    print(json.dumps(result))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
