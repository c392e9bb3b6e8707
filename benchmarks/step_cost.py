"""One decode step of the draft against one of the target, batch 1 (the draft issue's "≤ 1/8 of a target step").

    .venv/bin/python benchmarks/step_cost.py [--draft DIR] [--repeats 8] [--json out.json]

Each repeat times the target, then the draft, with `paperclub.distill.acceptance.step_cost` (median of 40
`ModelRunner.append` steps after 128 tokens); the figure is the median over repeats. To compare two versions of the
engine side by side, run it alternately from two checkouts (PYTHONPATH=<other checkout>/src, and another
TORCH_EXTENSIONS_DIR so the two kernel builds do not share a cache).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from paperclub.atomic import write_json
from paperclub.distill.acceptance import step_cost
from paperclub.engine.llm import LLM
from paperclub.models.draft import default_draft_dir, load_draft


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="SmolLM2-135M-Instruct")
    p.add_argument("--draft", default=None, help="draft directory (default: the target's shipped draft)")
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    llm = LLM(model=args.target, device="cpu", dtype="bfloat16")
    draft_dir = args.draft or default_draft_dir()
    draft = load_draft(draft_dir, llm.model)
    runs = []
    for _ in range(args.repeats):
        t, d = step_cost(llm.model), step_cost(draft)
        runs.append({"target_ms": t * 1e3, "draft_ms": d * 1e3, "ratio": d / t})
    med = {k: statistics.median(r[k] for r in runs) for k in ("target_ms", "draft_ms", "ratio")}
    print(f"target {med['target_ms']:.2f} ms, draft {med['draft_ms']:.2f} ms, draft/target {med['ratio']:.3f} "
          f"(median of {args.repeats}, {torch.get_num_threads()} threads)")
    if args.json:
        write_json(args.json, {"settings": vars(args) | {"draft": str(draft_dir)}, "median": med, "runs": runs})
    print(json.dumps(med))


if __name__ == "__main__":
    main()
