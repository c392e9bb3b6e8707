"""SSD fan-out settings against SD on this machine, side by side (batch 1, greedy, held-out prompts).

    .venv/bin/python benchmarks/ssd_fanout.py --prompts 16 --repeats 2 --json benchmarks/results/ssd_fanout.json

Every system is loaded once (each SSD setting with its own draft process) and they run round-robin per repeat,
so machine noise hits them alike. tokens/s includes prefill. Per SSD setting it also reports the cache hit rate
and how long the target waited for the draft per round: where the draft's cache build takes longer than the
target's verification, a wider fan-out raises the hit rate but slows every round.
"""

from __future__ import annotations

import argparse
import json
import statistics

from paperclub.atomic import write_json
from paperclub.bench.bench import OurSystem, load_prompts
from paperclub.engine import LLM
from paperclub.speculative import metrics as spec_metrics
from paperclub.speculative.config import SSDConfig

SETTINGS = {
    "uniform F=3, miss 4": {"fanout": "uniform"},
    "uniform F=2, miss 2": {"fanout": "uniform", "fanout_size": 2, "miss_fanout": 2},
    "uniform F=1, miss 1": {"fanout": "uniform", "fanout_size": 1, "miss_fanout": 1},
    "geometric budget 8": {"fanout": "geometric", "geometric_budget": 8},
    "adaptive, F <= 3, miss 4 (default)": {"fanout": "adaptive"},
}


def one_pass(llm: LLM, prompts, new_tokens: int) -> tuple[float, list[list[int]]]:
    """tokens/s and outputs of one pass at batch 1, timed as `paperclub bench` times our modes."""
    run = OurSystem(llm).run(prompts, 1, new_tokens, 0.0, 0)
    return len(prompts) * new_tokens / run.wall_s, run.outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--json", default="benchmarks/results/ssd_fanout.json")
    args = ap.parse_args()
    prompts = load_prompts("instruct", args.prompts)
    systems = {"sd": LLM(mode="sd", draft="default", k=args.k)}
    for name, extra in SETTINGS.items():
        systems[name] = LLM(mode="ssd", k=args.k, ssd_config=SSDConfig(k=args.k, draft_dtype=systems["sd"].dtype,
                                                                         **extra))
    for llm in systems.values():  # warm-up, untimed
        one_pass(llm, prompts[:2], 16)
        if llm.mode == "ssd":
            stats = llm.engine.decoder.stats
            for key in stats:
                stats[key] = 0.0
    runs: dict[str, list[float]] = {name: [] for name in systems}
    outputs = {}
    for _ in range(args.repeats):
        for name, llm in systems.items():
            tps, outputs[name] = one_pass(llm, prompts, args.new_tokens)
            runs[name].append(tps)
    results = {}
    for name, llm in systems.items():
        r = {"tokens_per_s": statistics.median(runs[name]), "tokens_per_s_runs": runs[name],
             "identical_to_sd": outputs[name] == outputs["sd"]}
        if llm.mode == "ssd":
            s = llm.engine.decoder.stats
            r |= {"cache_hit_rate": s["cache_hit_rate"],
                  "mean_acceptance_length": spec_metrics.summary(s)["mean_acceptance_length"],
                  "target_wait_ms_per_round": 1e3 * s["wait_s"] / s["num_drafts"],
                  "hidden_ms_per_round": 1e3 * s["hidden_s"] / s["num_drafts"]}
            if "adaptive_fanout" in s:  # the F the adaptive fan-out ran last
                r["adaptive_fanout_last"] = s["adaptive_fanout"]
        results[name] = r
        print(f"{name:32s} {r['tokens_per_s']:6.1f} tok/s  " + "  ".join(
            f"{k}={v:.3f}" for k, v in r.items() if isinstance(v, float) and k != "tokens_per_s"))
    for llm in systems.values():
        llm.close()
    write_json(args.json, {"settings": vars(args), "results": results})
    print(json.dumps({n: round(r["tokens_per_s"], 1) for n, r in results.items()}))


if __name__ == "__main__":
    main()
