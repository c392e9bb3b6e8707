"""What the draft's step costs inside the SD loop, against the target's decode step: every `ModelRunner.append`
of the draft (SD with the draft's chain, `--draft default`) and of an AR engine's target, timed while both generate
the same prompts in one process (the draft's K steps follow each other, the first after a target forward).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/draft_step.py --json benchmarks/results/draft_step.json

Issue 29 asks for a draft step of at most 1/8 of a target step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

from paperclub.atomic import write_json
from paperclub.bench.bench import load_prompts, machine_info
from paperclub.distill.categories import category_path
from paperclub.engine import LLM
from paperclub.engine.sampling import SamplingParams


def timed(runner, name: str, times: dict[str, list[float]]) -> None:
    """Record the seconds of every append of `runner` under name + its rows per sequence."""
    inner = runner.append

    def append(slots, starts, chunks, *a, **k):
        t = time.perf_counter()
        out = inner(slots, starts, chunks, *a, **k)
        times[f"{name} ({len(chunks[0])} rows)"].append(time.perf_counter() - t)
        return out

    runner.append = append


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--category", default="chat")
    ap.add_argument("--num-prompts", type=int, default=6)
    ap.add_argument("--passes", type=int, default=2, help="passes over the prompts; the last is kept")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    sd = LLM(mode="sd", draft="default", dtype="bfloat16", k=args.k)
    ar = LLM(mode="ar", dtype="bfloat16")
    times: dict[str, list[float]] = defaultdict(list)
    timed(sd.engine.decoder.proposer.runner, "draft", times)
    timed(sd.engine.decoder.runner, "SD target", times)
    timed(ar.engine.decoder.runner, "AR target", times)
    params = SamplingParams(max_tokens=128, ignore_eos=True)
    prompts = load_prompts(str(category_path(args.category)), args.num_prompts)
    for _ in range(args.passes):
        times.clear()
        for p in prompts:
            sd.generate([p], params)
            ar.generate([p], params)
    ar_step = statistics.mean(times["AR target (1 rows)"])
    rows = []
    for name, ts in sorted(times.items()):
        if len(ts) < 20:  # prefills
            continue
        mean = statistics.mean(ts)
        rows.append({"what": name, "n": len(ts), "mean_ms": 1e3 * mean, "median_ms": 1e3 * statistics.median(ts),
                     "vs_ar_step": mean / ar_step})
        print(f"{name:22s} n={len(ts):5d} mean {1e3 * mean:7.3f} ms  median {1e3 * statistics.median(ts):7.3f} ms"
              f"  {mean / ar_step:5.2f}x the AR step")
    if args.json:
        write_json(args.json, {"machine": machine_info(), "category": args.category, "k": args.k, "rows": rows})


if __name__ == "__main__":
    main()
