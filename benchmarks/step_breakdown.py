"""Where one bf16 decode step of the default model spends its time: all linears, the LM head, the rest.

    .venv/bin/python benchmarks/step_breakdown.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from paperclub.engine import LLM, SamplingParams
from paperclub.nn.cpu_kernels import cpu_kernel
from paperclub.nn.linear import packed


def median_ms(f, n: int = 20) -> float:
    f()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    llm = LLM(dtype="bfloat16", mode="ar")
    m, k = llm.model, cpu_kernel()
    raw = [p for n, p in m.named_parameters() if p.dim() == 2 and "embed" not in n]
    x = {w.shape[1]: torch.randn(1, w.shape[1]).bfloat16() for w in raw}
    body = [(x[w.shape[1]], packed(w)) for w in raw]  # as the engine passes them
    head = packed(m.lm_head.weight)
    gb = sum(w.numel() * w.element_size() for w in raw) / 1e9
    for threads in (1, 2):
        torch.set_num_threads(threads)
        t = median_ms(lambda: [k.linear(xi, w, None) for xi, w in body])
        s = median_ms(lambda: [w.sum() for w in raw])
        print(f"{threads} thread(s): body linears {gb / t * 1e3:5.1f} GB/s, torch.sum over the same tensors "
              f"{gb / s * 1e3:5.1f} GB/s")
    print(f"body linears (ours)     {median_ms(lambda: [k.linear(xi, w, None) for xi, w in body]):6.1f} ms")
    print(f"body linears (F.linear) {median_ms(lambda: [F.linear(x[w.shape[1]], w) for w in raw]):6.1f} ms")
    print(f"LM head (ours)          {median_ms(lambda: k.linear(x[576], head, None)):6.1f} ms")
    engine = llm.engine
    engine.add_request(llm.encode("Tell me a story about a cat."), SamplingParams(max_tokens=200, ignore_eos=True))
    engine.step()
    print(f"whole engine step       {median_ms(engine.step):6.1f} ms")


if __name__ == "__main__":
    main()
