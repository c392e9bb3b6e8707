"""bf16 matvec / small-M matmul on CPU for the SmolLM2-135M weight shapes: which PyTorch path is fastest?

Each case computes y_i = x @ W_i^T for a *stack* of L distinct weights W_i (L chosen so the stack is about
`--mib` MiB, default 270 = the whole bf16 model), exactly as a decode step streams every weight once. So
the numbers include cache misses and per-call overhead at the rate a real decode step sees them; the
reported time is per linear (stack time / L) and GB/s counts the weight bytes actually read.

Methods (all bf16 activations and weights unless named fp32):
  linear          F.linear(x, W)                                   (aten -> mkldnn matmul, unpacked)
  linear_fp32     F.linear(x32, W32)                               (fp32 weights: 2x the bytes, MKL sgemv)
  mkl_fp32_packed torch.ops.mkl._mkl_linear(x32, packed, W32, None, M)
  matmul_KN       torch.matmul(x, WT) with WT = W.t().contiguous() ([K, N] layout)
  mkldnn_packed   torch.ops.mkldnn._linear_pointwise(x, Wp, None, "none", [], "")
                  with Wp = torch.ops.mkldnn._reorder_linear_weight(W, M)
  int8pack (ref)  torch.ops.aten._weight_int8pack_mm(x, W_int8, scales)  -- int8 weights: NOT the bf16 model
  compile*        torch.compile of a module holding the L nn.Linear layers, returning all L outputs,
                  fullgraph, dynamic=False, under no_grad; variants: default, freezing=True,
                  mode="max-autotune-no-cudagraphs" + freezing  (compile time is printed)

Usage: python benchmarks/cpu_kernels.py [--threads 2] [--ms 1 4 6 16] [--shapes qkv o gate_up down head]
       [--no-compile] [--mib 270]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import bench_interleaved  # noqa: E402

SHAPES = {  # name: (N = out_features, K = in_features)
    "qkv": (960, 576),
    "o": (576, 576),
    "gate_up": (3072, 576),
    "down": (576, 1536),
    "head": (49152, 576),
}


class Stack(nn.Module):
    def __init__(self, ws: list[torch.Tensor]):
        super().__init__()
        self.lins = nn.ModuleList()
        for w in ws:
            lin = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
            lin.weight = nn.Parameter(w, requires_grad=False)
            self.lins.append(lin)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [lin(x) for lin in self.lins]


def compile_stack(mod: nn.Module, x: torch.Tensor, mode: str | None, freezing: bool):
    import torch._dynamo
    import torch._inductor.config as icfg

    torch._dynamo.reset()
    icfg.freezing = freezing
    fn = torch.compile(mod, fullgraph=True, dynamic=False, mode=mode)
    t0 = time.perf_counter()
    with torch.no_grad():
        fn(x)
    dt = time.perf_counter() - t0
    icfg.freezing = False
    return fn, dt


def run_shape(name: str, m: int, mib: float, do_compile: bool, reps: int) -> None:
    n, k = SHAPES[name]
    wbytes = n * k * 2
    nl = max(2, round(mib * 2**20 / wbytes))
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(n, k, generator=g, dtype=torch.bfloat16) * 0.02 for _ in range(nl)]
    x = torch.randn(m, k, generator=g, dtype=torch.bfloat16)
    x32 = x.float()
    fns = {}
    fns["linear"] = lambda: [F.linear(x, w) for w in ws]
    ws32 = [w.float() for w in ws]
    fns["linear_fp32"] = lambda: [F.linear(x32, w) for w in ws32]
    try:
        mkl_p = [torch.ops.mkl._mkl_reorder_linear_weight(w, m) for w in ws32]
        fns["mkl_fp32_packed"] = lambda: [
            torch.ops.mkl._mkl_linear(x32, p, w, None, m) for p, w in zip(mkl_p, ws32, strict=True)
        ]
    except Exception as e:  # noqa: BLE001
        print(f"  mkl_fp32_packed unavailable: {e!r}")
    wts = [w.t().contiguous() for w in ws]
    fns["matmul_KN"] = lambda: [torch.matmul(x, wt) for wt in wts]
    try:
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, m) for w in ws]
        lp = torch.ops.mkldnn._linear_pointwise
        fns["mkldnn_packed"] = lambda: [lp(x, p, None, "none", [], "") for p in packed]
        err = (lp(x, packed[0], None, "none", [], "").float() - F.linear(x32, ws32[0])).abs().max().item()
        if err > 0.05:
            print(f"  WARNING mkldnn_packed max err {err}")
    except Exception as e:  # noqa: BLE001
        print(f"  mkldnn_packed unavailable: {e!r}")
    q = [(w / (w.abs().amax(1, keepdim=True) / 127)).round().to(torch.int8) for w in ws]
    sc = [(w.abs().amax(1) / 127).to(torch.bfloat16) for w in ws]
    fns["int8pack(ref)"] = lambda: [
        torch.ops.aten._weight_int8pack_mm(x, qi, si) for qi, si in zip(q, sc, strict=True)
    ]
    bytes_per = {key: wbytes for key in fns}
    bytes_per["linear_fp32"] = bytes_per["mkl_fp32_packed"] = 2 * wbytes
    bytes_per["int8pack(ref)"] = wbytes // 2
    ctimes = {}
    if do_compile:
        for label, mode, frz in [
            ("compile", None, False),
            ("compile_freeze", None, True),
            ("compile_maxat_freeze", "max-autotune-no-cudagraphs", True),
        ]:
            mod = Stack(ws).eval()
            try:
                fn, dt = compile_stack(mod, x, mode, frz)
            except Exception as e:  # noqa: BLE001
                print(f"  {label} failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            ctimes[label] = dt
            fns[label] = (lambda f: lambda: f(x))(fn)
            bytes_per[label] = wbytes
    with torch.no_grad():
        res = bench_interleaved(fns, reps=reps, target_s=0.05)
    for key, t in res.items():
        per = t / nl
        ct = f"  (compile {ctimes[key]:.1f}s)" if key in ctimes else ""
        print(
            f"{name:8s} N={n:5d} K={k:4d} M={m:2d} L={nl:3d} {key:22s} {per * 1e6:9.1f} us/linear "
            f"{bytes_per[key] / per / 1e9:7.2f} GB/s{ct}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ms", type=int, nargs="+", default=[1, 4, 6, 16])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--mib", type=float, default=270)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__} threads={torch.get_num_threads()} stack ~{args.mib} MiB")
    for name in args.shapes:
        for m in args.ms:
            run_shape(name, m, args.mib, not args.no_compile, args.reps)


if __name__ == "__main__":
    main()
