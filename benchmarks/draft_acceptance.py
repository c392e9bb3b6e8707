"""Drafts side by side on the held-out prompts: acceptance at K, temperature 0 and 0.7, and step cost.

    .venv/bin/python benchmarks/draft_acceptance.py OLD_DRAFT_DIR NEW_DRAFT_DIR --json benchmarks/results/drafts.json

The same simulation `paperclub distill` reports at the end of a run (`paperclub.distill.acceptance`), with one seed
for every draft, against the embedded default target in bf16 on this machine, so that two drafts trained on
different machines or with different seeds compare like for like. Step costs are medians of 40 decode steps,
measured round-robin (target, then each draft) three times; the ratio is the median over those rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from paperclub.atomic import write_json
from paperclub.distill.acceptance import evaluate_acceptance, step_cost
from paperclub.distill.dataset import builtin_prompts
from paperclub.engine.llm import LLM
from paperclub.models.draft import load_draft


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("drafts", nargs="+", help="draft directories")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperatures", default="0,0.7")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="benchmarks/results/draft_acceptance.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    llm = LLM(device="cpu", dtype="bfloat16", max_model_len=2048)
    target = llm.model
    eos = set(target.cfg.eos_token_ids) | set(llm.tokenizer.eos_token_ids)
    prompts = [llm.encode(p) for p in builtin_prompts("eval")]
    drafts = {d: load_draft(d, target) for d in args.drafts}
    results: dict[str, dict] = {d: {"acceptance": {}} for d in args.drafts}
    for temp in (float(t) for t in args.temperatures.split(",")):
        for d, draft in drafts.items():
            rep = evaluate_acceptance(draft, target, prompts, k=args.k, temperature=temp,
                                      max_tokens=args.max_tokens, seed=args.seed, eos_ids=eos)
            results[d]["acceptance"][f"T={temp:g}"] = rep.to_dict()
            print(f"{Path(d).name:28s} T={temp:g}: acceptance {rep.acceptance_rate:.3f}, per position "
                  f"{rep.mean_position_acceptance:.3f}, {rep.tokens_per_target_forward:.2f} tokens/forward")
    ratios: dict[str, list[float]] = {d: [] for d in drafts}
    for _ in range(3):
        t = step_cost(target)
        for d, draft in drafts.items():
            ratios[d].append(step_cost(draft) / t)
    for d in drafts:
        results[d]["step_cost_ratio"] = statistics.median(ratios[d])
        results[d]["step_cost_ratio_runs"] = ratios[d]
        print(f"{Path(d).name:28s} draft step / target step: {results[d]['step_cost_ratio']:.3f}")
    write_json(args.json, {"settings": vars(args), "held_out_prompts": len(prompts), "results": results})
    print(json.dumps({Path(d).name: r["acceptance"].get("T=0", {}).get("mean_position_acceptance")
                      for d, r in results.items()}))


if __name__ == "__main__":
    main()
