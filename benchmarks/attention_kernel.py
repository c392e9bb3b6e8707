"""The CPU attention kernel on its two bf16 paths, vector (AVX-512) and AMX tiles, on the default model's layout
(9 query heads, 3 KV heads of 64 dims): microseconds per call, one layer, by context and query rows (1: decode;
6: chain verification of K = 5; 16: a token tree), medians of --repeats, the two paths interleaved.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/attention_kernel.py \
        --json benchmarks/results/tree/attention_kernel.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from paperclub.atomic import write_json
from paperclub.bench.bench import machine_info
from paperclub.errors import UserError
from paperclub.nn.cpu_kernels import cpu_kernel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="64,256,1000,2000")
    ap.add_argument("--rows", default="1,6,16")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    k = cpu_kernel()
    if k is None or not k.attention_amx(64):
        raise UserError("this benchmark needs the AVX-512 BF16 build with AMX tiles "
                        "(and PAPERCLUB_AMX_ATTENTION unset)")
    g = torch.Generator().manual_seed(0)
    H, Hkv, D = 9, 3, 64
    contexts = [int(x) for x in args.contexts.split(",")]
    cap = max(contexts) + 64
    kc = torch.randn(1, Hkv, cap, D, generator=g).bfloat16()
    vc = torch.randn(1, Hkv, cap, D, generator=g).bfloat16()
    slot = torch.tensor([0])
    out = []
    for ctx in contexts:
        for rows in (int(x) for x in args.rows.split(",")):
            q = torch.randn(1, rows, H, D, generator=g).bfloat16()
            S = ctx + rows
            causal = (torch.arange(S)[None, :] <= (ctx + torch.arange(rows))[:, None])[None] if rows > 1 else None
            times = {False: [], True: []}
            for r in range(args.repeats + 10):
                for amx in (False, True):
                    t = time.perf_counter()
                    k.attention_on(q, kc, vc, slot, S, causal, D**-0.5, None, amx)
                    if r >= 10:
                        times[amx].append(time.perf_counter() - t)
            vec, tiles = (1e6 * statistics.median(times[a]) for a in (False, True))
            out.append({"context": ctx, "rows": rows, "vector_us": vec, "amx_us": tiles, "speedup": vec / tiles})
            print(f"context {ctx:5d}, {rows:2d} rows: vector {vec:7.1f} us, AMX {tiles:7.1f} us ({vec / tiles:.2f}x)",
                  flush=True)
    if args.json:
        write_json(args.json, {"machine": machine_info(), "threads": torch.get_num_threads(),
                               "repeats": args.repeats, "rows": out})


if __name__ == "__main__":
    main()
