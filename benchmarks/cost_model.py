"""Validate the cost model (`paperclub.speculative.cost_model`) against measured runs on this machine.

    PYTHONPATH=src .venv/bin/python benchmarks/cost_model.py --prompts 8 --tokens 64 --repeats 3 \
        --out benchmarks/results/cost_model/cost_model.json

One process loads the default pair for every placement measured here: AR and SD with 2 threads, SD with token
trees (n-gram guesses and the draft's branches, `--tree`; its shape, tokens per round, nodes and the rounds the
draft ran, taken from its measured run like the others' acceptance), SD with prompt lookup and the draft where
nothing matched (`--draft ngram+default`; the share of rounds the draft ran also from its measured run), SSD with the
target on 1 thread and the draft process on 1 thread, SSD with the draft on 2 threads (the target then gets 1:
3 threads on 2 cores). It calibrates the step times of the target and the draft on the engine's own runners
(1 and 2 threads, a few row counts), then runs every placement round-robin per repeat (greedy, EOS ignored,
prefill included as in `paperclub bench`) and prints predicted against measured tokens/s (median of repeats).
The predictions take the step times from the calibration and the acceptance per position, the cache hit rate
and the adaptive fan-out's F from the measured run of the same mode: the model predicts speed, not acceptance.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from paperclub.atomic import write_json
from paperclub.bench.bench import OurSystem, load_prompts, machine_info, speculation_metrics
from paperclub.engine.llm import LLM
from paperclub.speculative import cost_model as cm
from paperclub.speculative.config import SSDConfig
from paperclub.speculative.tree_proposer import TreeConfig


def tree_shape(spec: dict) -> cm.TreeShape:
    """What the tree rounds of a measured run looked like (the engine's counters)."""
    return cm.TreeShape(spec["mean_acceptance_length"], spec["mean_tree_nodes"], TreeConfig().draft_width,
                        spec["num_tree_draft_rounds"] / spec["num_drafts"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--skip-ssd2", action="store_true", help="leave out SSD with a 2-thread draft")
    p.add_argument("--out", default="benchmarks/results/cost_model/cost_model.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    k = args.k
    systems = {
        "ar": LLM(mode="ar", dtype="bfloat16", device="cpu"),
        "sd": LLM(mode="sd", draft="default", k=k, dtype="bfloat16", device="cpu"),
        "ngram+draft": LLM(mode="sd", draft="ngram+default", k=k, dtype="bfloat16", device="cpu"),
        "tree": LLM(mode="sd", k=k, dtype="bfloat16", device="cpu", draft="ngram+default", tree=TreeConfig()),
    }
    ar = systems["ar"]
    prompt_ids = [ar.encode(x) for x in load_prompts("instruct", args.prompts)]
    mean_prompt = statistics.mean(len(x) for x in prompt_ids)

    print("loaded", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    target_runner = ar.engine.decoder.runner
    draft_runner = systems["sd"].engine.decoder.proposer.runner
    max_f = 4
    target_steps = cm.calibrate_steps(target_runner, rows=[1, k + 1, 2 * (k + 1), 16, 21, 31], threads=[1, 2])
    draft_steps = cm.calibrate_steps(draft_runner, rows=[1, k + 1, 2 * (k + 1), max_f * (k + 1)], threads=[1, 2])
    calibration_s = time.perf_counter() - t0
    costs = cm.Costs(target=target_steps, draft=draft_steps)
    # the SSD engines start after the calibration: their draft processes' start-up must not overlap it
    systems["ssd_t1_d1"] = LLM(mode="ssd", k=k, dtype="bfloat16", device="cpu",
                               ssd_config=SSDConfig(k=k, draft_dtype=torch.bfloat16, draft_threads=1))
    if not args.skip_ssd2:
        systems["ssd_t1_d2"] = LLM(mode="ssd", k=k, dtype="bfloat16", device="cpu",
                                   ssd_config=SSDConfig(k=k, draft_dtype=torch.bfloat16, draft_threads=2))

    print(f"calibrated in {calibration_s:.1f} s", file=sys.stderr, flush=True)
    samples = {name: cm.sample_run(x) for name, x in systems.items()}
    runs: dict[str, list] = {n: [] for n in systems}
    for name, s in systems.items():  # warm-up
        OurSystem(s, name).run(prompt_ids[:1], 1, 8, 0.0, 0)
    for _ in range(args.repeats):
        for name, s in systems.items():
            runs[name].append(OurSystem(s, name).run(prompt_ids, 1, args.tokens, 0.0, 0))

    w = cm.Workload(new_tokens=args.tokens, prompt_tokens=mean_prompt)

    def predict(name: str, c: cm.Costs, acc, hit, fanout, work: cm.Workload) -> cm.Prediction:
        if name == "ar":
            return cm.predict_ar(c, work, 2)
        if name == "sd":
            return cm.predict_sd(c, acc, k, work, 2)
        if name == "ngram+draft":  # acc: (acceptance, the share of rounds the draft model drafted)
            return cm.predict_sd(c, acc[0], k, work, 2, acc[1], "ngram+draft")
        if name == "tree":
            return cm.predict_tree(c, acc, TreeConfig().depth(k), work, 2)  # acc: the measured TreeShape
        place = cm.Placement(target_threads=1, draft_threads=systems[name].engine.decoder.config.draft_threads,
                             cores=2)
        return cm.predict_ssd(c, acc, cm.HitRate({fanout: hit}), k, fanout, work, place)

    rows = {}
    reference = runs["ar"][-1].outputs
    for name, rs in runs.items():
        tps = [r.tokens / r.wall_s for r in rs]
        spec = speculation_metrics(rs[-1].stats)
        fanout = int(systems[name].engine.decoder.stats.get("adaptive_fanout") or 1) if "ssd" in name else None
        acc = cm.Acceptance(spec["acceptance_rate_per_pos"]) if name != "ar" else None
        if name == "tree":
            acc = tree_shape(spec)
        if name == "ngram+draft":
            acc = (acc, 1 - spec.get("num_ngram_drafts", 0) / spec["num_drafts"])
        hit = spec["cache_hit_rate"]
        # the per-round overhead, from a short run on the calibration prompt (not one of the measured prompts)
        sample = samples[name]
        sampled = sample.tree or sample.acceptance
        if name == "ngram+draft":
            sampled = (sample.acceptance, sample.draft_share)
        bare = predict(name, costs, sampled, sample.hit_rate, sample.fanout or 1,
                       cm.Workload(sample.new_tokens, sample.prompt_tokens))
        overhead = cm.overhead_from(sample, bare)
        with_o = cm.Costs(costs.target, costs.draft, round_overhead_s=overhead, ar_overhead_s=overhead)
        pred0 = predict(name, costs, acc, hit, fanout, w)
        pred = predict(name, with_o, acc, hit, fanout, w)
        measured = statistics.median(tps)
        rows[name] = {"measured_tokens_per_s": measured, "measured_runs": tps,
                      "predicted_tokens_per_s": pred.tokens_per_s, "error": pred.tokens_per_s / measured - 1,
                      "predicted_without_overhead": pred0.tokens_per_s,
                      "error_without_overhead": pred0.tokens_per_s / measured - 1,
                      "round_overhead_s": overhead, "calibration_sample": cm.to_json(sample),
                      "prediction": cm.to_json(pred), "mean_acceptance_length": spec["mean_acceptance_length"],
                      "acceptance_rate_per_pos": spec["acceptance_rate_per_pos"],
                      "cache_hit_rate": hit, "adaptive_fanout": fanout,
                      "identical_to_ar": rs[-1].outputs == reference}
    for s in systems.values():
        s.close()
    out = {"machine": machine_info(), "settings": vars(args) | {"mean_prompt_tokens": mean_prompt},
           "calibration_s": calibration_s, "costs": cm.to_json(costs), "results": rows,
           "paper": {m: p.tokens_per_s for m, p in cm.predict_paper().items()},
           "paper_published": cm.PAPER_PUBLISHED}
    write_json(args.out, out)
    print(f"calibration {calibration_s:.1f} s; mean prompt {mean_prompt:.0f} tokens; {args.tokens} new tokens")
    print(f"{'placement':<12} {'predicted':>10} {'measured':>10} {'error':>8} {'no overhead':>12} {'o ms':>6}")
    for name, r in rows.items():
        print(f"{name:<12} {r['predicted_tokens_per_s']:10.1f} {r['measured_tokens_per_s']:10.1f} "
              f"{r['error']:+8.1%} {r['error_without_overhead']:+12.1%} {r['round_overhead_s'] * 1e3:6.1f}")
    print(json.dumps({n: round(r["error"], 3) for n, r in rows.items()}))


if __name__ == "__main__":
    main()
