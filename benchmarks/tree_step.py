"""What a token tree costs the target: one verification forward over 1 + N tree nodes against a one-token decode
step, on the default model (bf16, batch 1, a 256-token context), median of --repeats after warm-up.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/tree_step.py --json benchmarks/results/tree/tree_step.json

Trees are the shape the tree proposer builds: `branches` chains of depth K = 5 below the root (no shared
prefixes, the worst case for their size), so N = 5 x branches; a chain of K tokens (N = 5, SD's verification)
is the first row; then the shipped draft's forward over 1 and 4 rows (a tree's branch step). Rows are
interleaved (every size once per repeat) so that drift hits all sizes alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from paperclub.atomic import write_json
from paperclub.bench.bench import machine_info
from paperclub.engine import LLM
from paperclub.models.draft import default_draft_dir
from paperclub.speculative.tree import build_tree, tree_meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--branches", default="1,2,3,4,5,6,7,8,10", help="comma list of chains per tree")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    branches = [int(x) for x in args.branches.split(",")]
    llm = LLM(mode="ar", dtype="bfloat16")
    runner = llm.engine.decoder.runner
    runner.reserve(1, args.context + 1 + args.k * max(branches) + 8)
    slot = runner.cache.allocate()
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(100, 20000, (args.context,), generator=g).tolist()
    runner.append([slot], [0], [prefix], True)
    trees = {b: build_tree([(torch.randint(100, 20000, (args.k,), generator=g).tolist(), "x") for _ in range(b)])
             for b in branches}

    def decode() -> None:
        runner.append([slot], [args.context], [[5]], True)

    def verify(b: int):
        tokens, positions, meta = tree_meta([trees[b]], [5], [args.context], [slot], runner.device)
        return lambda: runner.forward_meta(tokens, positions, meta)

    draft = LLM(mode="sd", dtype="bfloat16", k=args.k, auto_calibrate=False,
                draft=str(default_draft_dir())).engine.decoder.proposer.runner
    draft.reserve(1, args.context + 16)
    dslot = draft.cache.allocate()
    draft.append([dslot], [0], [prefix], True)

    def draft_rows(n: int):
        return lambda: draft.append([dslot], [args.context], [[5] * n], True)

    fns = {"decode (1 row)": decode} | {f"tree {5 * b} nodes": verify(b) for b in branches} | {
        "draft (1 row)": draft_rows(1), "draft (4 rows)": draft_rows(4)}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(args.repeats + 3):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if r >= 3:
                times[name].append(time.perf_counter() - t)
    base = statistics.median(times["decode (1 row)"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        n = int(name.split("(")[1].split()[0]) if "(" in name else 1 + int(name.split()[1])
        rows.append({"what": name, "rows": n,
                     "median_ms": 1e3 * med, "vs_decode": med / base})
        print(f"{name:16s} {1e3 * med:7.2f} ms  {med / base:5.2f}x")
    if args.json:
        write_json(args.json, {"machine": machine_info(), "context": args.context, "k": args.k,
                               "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
