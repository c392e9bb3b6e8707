"""Memory read bandwidth as PyTorch sees it on this machine.

Method: for each probe a working set is streamed once per call. NOTE: this VM reports a 480 MiB L3
(shared with other tenants of the host), so sizes are swept: 270 MiB = the bf16 model, 2048 MiB = surely
DRAM. Per call, the time per call is the median of `--reps` timed blocks
(each block ~0.1 s of back-to-back calls); GB/s = bytes read (+ written, for copy) / time. Probes are run
round-robin so that noise from other tenants hits them alike.

Probes:
  sum_fp32 / sum_bf16      x.sum()              -- pure streaming read
  copy_fp32                dst.copy_(src)       -- read + write (counted as 2x bytes)
  matvec_fp32 / _bf16      F.linear(x[1,K], W[N,K]) with W = 512 MiB  -- what a decode step does
  matvec_bf16_K576         same, with the model's K=576 (tall skinny weight like the LM head)

Usage: python benchmarks/bandwidth.py [--threads 2] [--mib 64 270 2048] [--reps 11]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import bench_interleaved  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--mib", type=int, nargs="+", default=[64, 270, 2048])
    ap.add_argument("--reps", type=int, default=11)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, median of {args.reps} blocks")
    for mib in args.mib:
        run_size(mib, args.threads, args.reps)


def run_size(mib: int, threads: list[int], reps: int) -> None:
    nbytes = mib * 2**20
    n32 = nbytes // 4
    n16 = nbytes // 2
    a32 = torch.randn(n32)
    b32 = torch.empty_like(a32)
    a16 = torch.randn(n16, dtype=torch.bfloat16)
    k = 4096
    w32 = torch.randn(n32 // k, k)
    w16 = torch.randn(n16 // k, k, dtype=torch.bfloat16)
    x32 = torch.randn(1, k)
    x16 = x32.bfloat16()
    w16s = torch.randn(n16 // 576, 576, dtype=torch.bfloat16)
    x16s = torch.randn(1, 576, dtype=torch.bfloat16)
    probes = {
        "sum_fp32": (lambda: a32.sum(), nbytes),
        "sum_bf16": (lambda: a16.sum(), nbytes),
        "copy_fp32": (lambda: b32.copy_(a32), 2 * nbytes),
        "matvec_fp32_K4096": (lambda: F.linear(x32, w32), w32.nbytes),
        "matvec_bf16_K4096": (lambda: F.linear(x16, w16), w16.nbytes),
        "matvec_bf16_K576": (lambda: F.linear(x16s, w16s), w16s.nbytes),
    }
    for nt in threads:
        torch.set_num_threads(nt)
        res = bench_interleaved({k: v[0] for k, v in probes.items()}, reps=reps, target_s=0.1)
        for name, t in res.items():
            gbs = probes[name][1] / t / 1e9
            print(f"{mib:5d} MiB threads={nt}  {name:20s} {t * 1e3:8.2f} ms  {gbs:6.2f} GB/s", flush=True)


if __name__ == "__main__":
    main()
