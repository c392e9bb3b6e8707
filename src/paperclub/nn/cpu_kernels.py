"""The engine's compiled CPU kernels (`kernels/*.cpp`): batch-invariant linear and attention for x86 CPUs,
built once per machine into torch's extension cache on first use.

Two builds, chosen by what the CPU offers: AVX-512 with BF16 dot products (and AMX tiles where present), or
AVX2 with FMA (AMD Zen 1-3, older Intel). Each is compiled with only its own instruction set, so the compiler
cannot slip an instruction the CPU lacks into the shared elementwise code.

Batch invariance means a row's output does not depend on which other rows share the call. Without it a
token's logits differ in the last bits between a one-token decode and a K+1-token verification, and greedy
speculative decoding can drift from greedy AR on near-ties. Where the kernels cannot be built or used
(other CPUs, CUDA, training) the callers fall back to torch's own ops.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelBuild:
    name: str  # the extension's name in torch's cache: one per build, so the two never overwrite each other
    sources: tuple[str, ...]
    cflags: tuple[str, ...]


AVX512 = KernelBuild(
    "paperclub_cpu_kernels",
    ("linear_cpu.cpp", "amx_cpu.cpp", "attention_cpu.cpp", "block_cpu.cpp", "module_cpu.cpp"),
    ("-mavx512f", "-mavx512bf16", "-mavx512vl", "-mavx512bw", "-mfma", "-mamx-tile", "-mamx-bf16"),
)
AVX2 = KernelBuild(
    "paperclub_cpu_kernels_avx2",
    ("linear_avx2.cpp", "attention_avx2.cpp", "block_cpu.cpp", "module_cpu.cpp"),
    ("-mavx2", "-mfma", "-mf16c"),
)


def kernel_build(cpu_flags: set[str]) -> KernelBuild | None:
    """The build for a CPU with these /proc/cpuinfo flags, or None where neither instruction set is there."""
    if {"avx512f", "avx512_bf16"} <= cpu_flags:
        return AVX512
    if {"avx2", "fma"} <= cpu_flags:
        return AVX2
    return None


@functools.cache
def cpu_kernel():
    """The compiled extension for this CPU, or None where it cannot be built or used."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    build = kernel_build(flags)
    if build is None:
        log.info("CPU has neither AVX512-BF16 nor AVX2+FMA: using torch's ops (not batch-invariant)")
        return None
    return load_build(build)


@functools.cache
def load_build(build: KernelBuild):
    """Compile (once per machine, cached by torch) and import one build; None where it cannot be built. The
    engine takes `cpu_kernel()`; tests also load the AVX2 build on AVX-512 machines so that both are checked."""
    from torch.utils import cpp_extension

    kernels = Path(__file__).parent / "kernels"
    log.info("loading the CPU kernels (%s, compiled on first use, about a minute)", build.name)
    try:
        return cpp_extension.load(
            name=build.name,
            sources=[str(kernels / name) for name in build.sources],
            # -fopenmp: at::parallel_for is an OpenMP pragma in the headers; without it the kernels run serially
            extra_cflags=["-O3", "-fopenmp", *build.cflags],
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
