"""The engine's compiled CPU kernels (`kernels/*.cpp`): batch-invariant linear and attention for x86 CPUs
with AVX-512 BF16, built once per machine into torch's extension cache on first use.

Batch invariance means a row's output does not depend on which other rows share the call. Without it a
token's logits differ in the last bits between a one-token decode and a K+1-token verification, and greedy
speculative decoding can drift from greedy AR on near-ties. Where the kernels cannot be built or used
(other CPUs, CUDA, training) the callers fall back to torch's own ops.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@functools.cache
def cpu_kernel():
    """The compiled extension, or None where it cannot be built or used."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    if "avx512_bf16" not in flags or "avx512f" not in flags:
        log.info("CPU lacks AVX512-BF16: using torch's linear (not batch-invariant)")
        return None
    from torch.utils import cpp_extension

    kernels = Path(__file__).parent / "kernels"
    log.info("loading the CPU kernels (compiled on first use, about a minute)")
    try:
        return cpp_extension.load(
            name="paperclub_cpu_kernels",
            sources=[str(kernels / name)
                     for name in ("linear_cpu.cpp", "amx_cpu.cpp", "attention_cpu.cpp", "block_cpu.cpp")],
            # -fopenmp: at::parallel_for is an OpenMP pragma in the headers; without it the kernels run serially
            extra_cflags=["-O3", "-fopenmp", "-mavx512f", "-mavx512bf16", "-mavx512vl", "-mavx512bw", "-mfma",
                         "-mamx-tile", "-mamx-bf16"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:  # no compiler, no headers: stay correct, only slower
        log.warning("could not build the CPU kernels (%s): using torch's ops", str(e).splitlines()[0])
        return None


def usable(*tensors: torch.Tensor) -> bool:
    """True when the CPU kernels can take these tensors: CPU, bf16/fp32 alike, no autograd."""
    t0 = tensors[0]
    if t0.device.type != "cpu" or t0.dtype not in (torch.bfloat16, torch.float32):
        return False
    if any(t.dtype != t0.dtype for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return cpu_kernel() is not None
