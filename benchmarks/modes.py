"""AR vs SD vs SSD on the default pair, side by side in one run (batch 1, greedy by default).

    .venv/bin/python benchmarks/modes.py --prompts 4 --repeats 3 --json benchmarks/results/modes.json

Prompts are the first N of the draft's held-out evaluation set (`paperclub/distill/data/distill_eval.jsonl`).
Modes run round-robin per repeat so machine noise hits them alike; tokens/s includes prefill.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from paperclub.atomic import write_json
from paperclub.distill.dataset import prompt_set_path
from paperclub.engine import LLM, SamplingParams
from paperclub.engine.cli import read_prompts_jsonl

EVAL = prompt_set_path("distill_eval")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--json", default="benchmarks/results/modes.json")
    args = ap.parse_args()
    prompts = read_prompts_jsonl(str(EVAL))[: args.prompts]
    llms = {m: LLM(mode=m, k=args.k, dtype="bfloat16", device="cpu", max_num_seqs=1) for m in ("ar", "sd", "ssd")}
    runs: dict[str, list[float]] = {m: [] for m in llms}
    stats: dict[str, dict] = {}
    outputs: dict[str, list[list[int]]] = {}
    for r in range(args.repeats):
        for mode, llm in llms.items():
            params = [SamplingParams(max_tokens=args.new_tokens, temperature=args.temperature, seed=i)
                      for i in range(len(prompts))]
            n, wall, per = 0, 0.0, []
            for p, sp in zip(prompts, params, strict=True):  # batch 1: one request at a time
                t = time.perf_counter()
                (out,) = llm.generate([p], sp)
                wall += time.perf_counter() - t
                n += len(out.token_ids)
                per.append(out)
            runs[mode].append(n / wall)
            outputs[mode] = [o.token_ids for o in per]
            keys = ("acceptance_rate", "mean_acceptance_length", "cache_hit_rate")
            stats[mode] = {k: statistics.mean(o.metrics[k] for o in per) for k in keys if k in per[0].metrics}
            print(f"repeat {r} {mode}: {runs[mode][-1]:.1f} tok/s {stats[mode]}")
    for llm in llms.values():
        llm.close()
    result = {
        "settings": vars(args) | {"date": time.strftime("%Y-%m-%d")},
        "results": {m: {"tokens_per_s": statistics.median(v), "tokens_per_s_runs": v, **stats[m]}
                    for m, v in runs.items()},
        "identical_greedy": args.temperature == 0 and outputs["ar"] == outputs["sd"] == outputs["ssd"],
    }
    write_json(args.json, result)
    print(json.dumps(result["results"], indent=2), "identical_greedy:", result["identical_greedy"])


if __name__ == "__main__":
    main()
