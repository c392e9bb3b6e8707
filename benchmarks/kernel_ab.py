"""Two kernel timings meant to be run in alternating processes against another checkout (A/B):

- the prefill of one prompt of the default model at several lengths (median of 5 each), and
- batch-invariant attention of 16 decode rows whose contexts are skewed: one row sees 2000 keys, 15 see 100
  (best of 600 calls of one layer's attention: 9 query and 3 KV heads of 64, bf16).

    .venv/bin/python benchmarks/kernel_ab.py                        # this checkout
    PYTHONPATH=/path/to/other/checkout/src .venv/bin/python benchmarks/kernel_ab.py   # the other one

Prints one JSON line.
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from paperclub.engine import LLM
from paperclub.nn.cpu_kernels import cpu_kernel


def prefill_ms(lengths=(64, 150, 300, 600), repeats: int = 5) -> dict[str, float]:
    runner = LLM(dtype="bfloat16", mode="ar").engine.decoder.runner
    runner.reserve(1, max(lengths) + 1)
    g = torch.Generator().manual_seed(0)
    out = {}
    for n in lengths:
        tokens = torch.randint(100, 40000, (n,), generator=g).tolist()
        runner.append([0], [0], [tokens], True)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            runner.append([0], [0], [tokens], True)
            times.append(time.perf_counter() - t)
        out[str(n)] = statistics.median(times) * 1e3
    return out


def skewed_attention_us(calls: int = 600) -> float:
    k = cpu_kernel()
    g = torch.Generator().manual_seed(0)
    B, H, Hkv, D, cap = 16, 9, 3, 64, 2048
    lens = [2000] + [100] * 15
    kc = torch.randn(B, Hkv, cap, D, generator=g).bfloat16()
    vc = torch.randn(B, Hkv, cap, D, generator=g).bfloat16()
    q = torch.randn(B, 1, H, D, generator=g).bfloat16()
    S = max(lens)
    mask = torch.zeros(B, 1, S, dtype=torch.bool)
    for b, n in enumerate(lens):
        mask[b, 0, :n] = True
    slots = torch.arange(B)
    best = float("inf")
    for _ in range(calls):
        t = time.perf_counter()
        k.attention(q, kc, vc, slots, S, mask, D**-0.5)
        best = min(best, time.perf_counter() - t)
    return best * 1e6


if __name__ == "__main__":
    print(json.dumps({"prefill_ms": prefill_ms(), "skewed_attention_us": skewed_attention_us()}))
