"""Speculative-decoding acceptance per prompt category: `paperclub bench` once per category of `data/spec_eval/`.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/spec_categories.py --out benchmarks/results/spec_categories

Categories (`paperclub.distill.categories`): chat, code, math, raw (continuation, no chat template), summarize
(600-1500 words of context) and non_english; none of their prompts come from the draft's training pool. Each
category is one `run_bench` (the code behind `paperclub bench`, peers off): batch 1, greedy, every generation exactly
--max-new-tokens tokens, a warm-up pass then --repeats timed passes, tokens/s the median. Writes OUT/<category>.json
(bench's JSON, unchanged) and OUT/summary.json, and prints a markdown table: per category and mode tokens/s, speed-up
over AR, mean_acceptance_length and acceptance_rate (vLLM's names), whether greedy outputs were identical across
modes, and a category-balanced mean (each category weighs the same, however many tokens it drafted).
--table-only rebuilds the table and summary.json from the JSON files already in OUT.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from paperclub.atomic import check_writable, write_json
from paperclub.distill.categories import CATEGORIES, category_path
from paperclub.errors import UserError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--categories", default=",".join(CATEGORIES),
                    help=f"comma list, a subset of {','.join(CATEGORIES)} (default: all)")
    ap.add_argument("--modes", default="ar,sd", help="comma list of bench modes (default: ar,sd)")
    ap.add_argument("--draft", default=None, help="draft model directory, passed to bench (default: the shipped one)")
    ap.add_argument("--model", default=None, help="target model, passed to bench (default: the embedded one)")
    ap.add_argument("--k", type=int, default=5, help="draft tokens per round")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-prompts", type=int, default=12, help="first N prompts of each category (12 in each)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--table-only", action="store_true", help="no runs: the table from OUT/<category>.json")
    args = ap.parse_args(argv)
    args.categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    for c in args.categories:
        category_path(c)  # a UserError naming the valid categories
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    return args


def run_category(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from paperclub.bench.bench import BenchSettings, run_bench

    settings = BenchSettings(prompts=str(category_path(name)), num_prompts=args.num_prompts, modes=args.modes,
                             peers=[], k=args.k, max_new_tokens=args.max_new_tokens, repeats=args.repeats,
                             model=args.model, draft=args.draft, dtype=args.dtype, device=args.device)
    return run_bench(settings)


def summarize(datas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per category and mode the headline figures, and the category-balanced means over the categories given."""
    per_category: dict[str, Any] = {}
    for cat, data in datas.items():
        results = data["results"]
        ar = results.get("ar", {}).get("tokens_per_s")
        modes = {}
        for mode, r in results.items():
            modes[mode] = {"tokens_per_s": r["tokens_per_s"],
                           "speedup_vs_ar": r["tokens_per_s"] / ar if ar else None,
                           "mean_acceptance_length": r.get("mean_acceptance_length"),
                           "acceptance_rate": r.get("acceptance_rate"),
                           "acceptance_rate_per_pos": r.get("acceptance_rate_per_pos")}
        per_category[cat] = {"modes": modes, "num_prompts": data["settings"]["num_prompts"],
                             "identical_greedy": data.get("identical_greedy"),
                             "mismatches": len(data.get("mismatches") or [])}
    balanced: dict[str, Any] = {}
    all_modes = list(dict.fromkeys(m for c in per_category.values() for m in c["modes"]))
    for mode in all_modes:
        rows = [c["modes"][mode] for c in per_category.values() if mode in c["modes"]]

        def mean(key: str, rows: list[dict[str, Any]] = rows) -> float | None:
            vals = [r[key] for r in rows if r[key] is not None]
            return statistics.fmean(vals) if vals and len(vals) == len(rows) else None

        speedups = [r["speedup_vs_ar"] for r in rows if r["speedup_vs_ar"] is not None]
        balanced[mode] = {
            "categories": len(rows),
            "mean_acceptance_length": mean("mean_acceptance_length"),
            "acceptance_rate": mean("acceptance_rate"),
            "tokens_per_s": mean("tokens_per_s"),
            "speedup_vs_ar_geomean": (math.exp(statistics.fmean(math.log(s) for s in speedups))
                                      if speedups and len(speedups) == len(rows) else None),
        }
    greedy = [c["identical_greedy"] for c in per_category.values() if c["identical_greedy"] is not None]
    return {"categories": per_category, "balanced": balanced,
            "identical_greedy": all(greedy) if greedy else None}


def _f(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def table(summary: dict[str, Any]) -> str:
    lines = ["| category | mode | tok/s | speed-up vs AR | mean_acceptance_length | acceptance_rate "
             "| identical greedy |", "|---|---|---:|---:|---:|---:|---|"]
    for cat, c in summary["categories"].items():
        greedy = "–" if c["identical_greedy"] is None else ("yes" if c["identical_greedy"] else
                                                             f"no ({c['mismatches']} mismatches)")
        for mode, r in c["modes"].items():
            lines.append(f"| {cat} | {mode} | {r['tokens_per_s']:.1f} | {_f(r['speedup_vs_ar'], '.2f')} | "
                         f"{_f(r['mean_acceptance_length'], '.3f')} | {_f(r['acceptance_rate'], '.3f')} | {greedy} |")
    for mode, b in summary["balanced"].items():
        n = b["categories"]
        label = f"**balanced mean** ({n} categor{'y' if n == 1 else 'ies'})"
        lines.append(f"| {label} | {mode} | {_f(b['tokens_per_s'], '.1f')} | "
                     f"{_f(b['speedup_vs_ar_geomean'], '.2f')} (geo-mean) | {_f(b['mean_acceptance_length'], '.3f')} | "
                     f"{_f(b['acceptance_rate'], '.3f')} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    datas: dict[str, dict[str, Any]] = {}
    if args.table_only:
        for cat in args.categories:
            path = out / f"{cat}.json"
            if path.is_file():
                datas[cat] = json.loads(path.read_text())
            else:
                print(f"{path}: not found, category left out", file=sys.stderr)
    else:
        check_writable(out / "summary.json", "--out")  # before any model loads
        for cat in args.categories:
            print(f"== {cat}", file=sys.stderr)
            datas[cat] = run_category(cat, args)
            write_json(out / f"{cat}.json", datas[cat])
    if not datas:
        print("no results", file=sys.stderr)
        return 1
    summary = summarize(datas)
    first = next(iter(datas.values()))
    settings = {k: v for k, v in vars(args).items() if k != "table_only"} | {
        "target": first.get("target"), "draft": first.get("draft"), "machine": first.get("machine")}
    write_json(out / "summary.json", {"settings": settings, **summary})
    print(table(summary))
    print(f"identical greedy outputs across modes in every category: {summary['identical_greedy']}")
    print(f"wrote {out}/<category>.json and {out / 'summary.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
