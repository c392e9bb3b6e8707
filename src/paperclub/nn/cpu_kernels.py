"""The engine's compiled CPU kernels (`kernels/*.cpp`): batch-invariant linear and attention for x86 CPUs,
built once per machine into torch's extension cache on first use.

Three builds, chosen by what the CPU offers: AVX-512 with BF16 dot products (Cooper Lake, Sapphire Rapids and
later with their AMX tiles, AMD Zen 4 and later); AVX-512 without BF16 (Skylake-SP to Ice Lake), where bf16
weights are widened to float32 for 16-lane multiply-adds; or AVX2 with FMA (AMD Zen 1-3, older Intel), the same
on 8 lanes. Each is compiled with only its own instruction set, so the compiler cannot slip an instruction the
CPU lacks into the shared elementwise code. Results are batch-invariant within a build; two builds may differ
in the last bits.

Batch invariance means a row's output does not depend on which other rows share the call. Without it a
token's logits differ in the last bits between a one-token decode and a K+1-token verification, and greedy
speculative decoding can drift from greedy AR on near-ties. Where the kernels cannot be built or used
(other CPUs, CUDA, training) the callers fall back to torch's own ops.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from paperclub.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelBuild:
    name: str  # the extension's name in torch's cache: one per build, so builds never overwrite each other
    requires: frozenset[str]  # the /proc/cpuinfo flags the CPU must have
    sources: tuple[str, ...]
    cflags: tuple[str, ...]


AVX512_BF16 = KernelBuild(
    "paperclub_cpu_kernels",
    frozenset({"avx512f", "avx512_bf16"}),
    ("linear_cpu.cpp", "amx_cpu.cpp", "attention_cpu.cpp", "attention_amx.cpp", "block_cpu.cpp", "argmax_cpu.cpp",
     "module_cpu.cpp"),
    ("-mavx512f", "-mavx512bf16", "-mavx512vl", "-mavx512bw", "-mfma", "-mamx-tile", "-mamx-bf16",
     "-DPAPERCLUB_AMX_ATTENTION"),
)
AVX512 = KernelBuild(
    "paperclub_cpu_kernels_avx512",
    frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"}),
    ("linear_fma.cpp", "attention_cpu.cpp", "block_cpu.cpp", "argmax_cpu.cpp", "module_cpu.cpp"),
    ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"),
)
AVX2 = KernelBuild(
    "paperclub_cpu_kernels_avx2",
    frozenset({"avx2", "fma", "f16c"}),
    ("linear_fma.cpp", "attention_cpu.cpp", "block_cpu.cpp", "argmax_cpu.cpp", "module_cpu.cpp"),
    ("-mavx2", "-mfma", "-mf16c"),
)
BUILDS = (AVX512_BF16, AVX512, AVX2)  # fastest first


def kernel_build(cpu_flags: set[str]) -> KernelBuild | None:
    """The build for a CPU with these /proc/cpuinfo flags, or None where it has neither AVX-512 nor AVX2+FMA."""
    return next((b for b in BUILDS if b.requires <= cpu_flags), None)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    lines = [line for line in cpuinfo.splitlines() if line.startswith("flags")]
    return frozenset(f for line in lines for f in line.split(":", 1)[1].split())


@functools.cache
def selected_build() -> KernelBuild | None:
    """The build this process uses (None: torch's ops). `PAPERCLUB_CPU_KERNELS` picks one by name (avx512_bf16,
    avx512, avx2; none: torch's ops), e.g. to compare two on one machine; otherwise the CPU's flags decide."""
    choice = os.environ.get("PAPERCLUB_CPU_KERNELS", "").lower()
    if not choice:
        build = kernel_build(cpu_flags())
        if build is None:
            log.info("CPU has neither AVX-512 nor AVX2+FMA: using torch's ops (not batch-invariant)")
        return build
    named = {"avx512_bf16": AVX512_BF16, "avx512": AVX512, "avx2": AVX2, "none": None}
    if choice not in named:
        raise UserError(f"PAPERCLUB_CPU_KERNELS={choice!r}: expected one of {', '.join(named)}")
    build = named[choice]
    if build is not None and not build.requires <= cpu_flags():
        missing = " ".join(sorted(build.requires - cpu_flags()))
        raise UserError(f"PAPERCLUB_CPU_KERNELS={choice}: this CPU lacks {missing}; unset it for this CPU's build")
    return build


@functools.cache
def cpu_kernel():
    """The compiled extension of `selected_build()`, or None where there is none or it cannot be built."""
    build = selected_build()
    return None if build is None else load_build(build)


KERNEL_DIR = Path(__file__).parent / "kernels"  # the C++ sources
BUILD_WAIT_S = 900.0  # how long to wait for another process compiling the same build before giving up on it


def build_directory(build: KernelBuild) -> Path:
    """Where a build is compiled and cached: `$TORCH_EXTENSIONS_DIR` (torch's own setting) or
    `~/.cache/torch_extensions`, then one folder per torch version, checkout and build. The checkout (where the kernel
    sources live) is part of the name because torch rebuilds whenever the source paths change: two checkouts
    sharing one folder would rebuild it in turn, each waiting for the other's compile."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "torch_extensions"
    checkout = hashlib.sha256(str(KERNEL_DIR.resolve()).encode()).hexdigest()[:8]
    return base / f"paperclub-torch{torch.__version__.split('+')[0]}" / f"{build.name}-{checkout}"


@contextlib.contextmanager
def build_lock(folder: Path, wait_s: float = BUILD_WAIT_S):
    """Hold an exclusive lock on one build folder while compiling into it.

    torch's own lock is a file whose existence is the lock: a build killed midway (Ctrl-C, a session or CI job
    cut short) leaves it behind and every later process waits on it forever. An `flock` dies with its process,
    so under it torch's leftover file is known to be stale and is removed. Raises TimeoutError after `wait_s`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "paperclub.lock", "a+") as f:
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process held {folder} for {wait_s:.0f} s") from None
                if not told:
                    log.info("waiting for another process compiling the CPU kernels in %s", folder)
                    told = True
                time.sleep(0.2)
        try:
            stale = folder / "lock"
            if stale.exists():
                log.info("removing a lock left by an interrupted kernel build: %s", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@functools.cache
def load_build(build: KernelBuild):
    """Compile (once per machine and torch version, cached) and import one build; None where it cannot be
    built. The engine takes `cpu_kernel()`; tests also load the other builds this CPU can run, so that they
    are checked too."""
    from torch.utils import cpp_extension

    kernels = KERNEL_DIR
    folder = build_directory(build)
    log.info("loading the CPU kernels (%s, compiled on first use, about a minute)", build.name)
    try:
        with build_lock(folder):
            return cpp_extension.load(
                name=build.name,
                sources=[str(kernels / name) for name in build.sources],
                # -fopenmp: at::parallel_for is an OpenMP pragma in the headers; without it the kernels run serially
                extra_cflags=["-O3", "-fopenmp", *build.cflags],
                extra_ldflags=["-fopenmp"],
                build_directory=str(folder),
                verbose=False,
            )
    except Exception as e:  # no compiler, no headers, a build that never finished: stay correct, only slower
        log.warning("could not build the CPU kernels (%s): using torch's ops", str(e).splitlines()[0])
        return None


@functools.cache
def kernel_signature() -> str:
    """What decides this process's CPU arithmetic, as a short digest: the build in use, its sources and the AMX
    switches. A step-time calibration stored under it (`mode="auto"`) is redone when any of them changes."""
    k = cpu_kernel()
    if k is None:
        return "torch"
    build = selected_build()
    h = hashlib.sha256(build.name.encode())
    for name in build.sources + ("vec_avx2.h", "amx_tiles.h"):
        h.update((KERNEL_DIR / name).read_bytes())
    h.update(repr((k.amx(), k.attention_amx(64))).encode() if build is AVX512_BF16 else b"")
    return h.hexdigest()[:12]


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
