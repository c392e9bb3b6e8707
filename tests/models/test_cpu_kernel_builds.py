"""The CPU kernel builds compile. The kernel tests skip where a build is missing and the engine falls back to torch's
ops with a warning, so without these checks a compile error would pass the suite unnoticed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import paperclub.nn.cpu_kernels as ck

COMPILER = shutil.which(os.environ.get("CXX", "c++"))
pytestmark = pytest.mark.skipif(COMPILER is None, reason="no C++ compiler")


def test_the_builds_this_cpu_runs_load():
    runnable = [b for b in ck.BUILDS if b.requires <= ck.cpu_flags()]
    if not runnable:
        pytest.skip("this CPU has neither AVX-512 nor AVX2+FMA")
    for build in runnable:
        assert ck.load_build(build) is not None, f"{build.name} did not build: see the warning logged above"


def test_the_other_builds_compile():
    """Builds for CPUs other than this one are compiled without being loaded (their code may not run here)."""
    from torch.utils import cpp_extension

    others = [b for b in ck.BUILDS if not b.requires <= ck.cpu_flags()]
    if not others:
        pytest.skip("this CPU runs every build")
    kernels = Path(ck.__file__).parent / "kernels"
    includes = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"]]

    def syntax_check(build: ck.KernelBuild, source: str) -> str:
        cmd = [COMPILER, "-fsyntax-only", "-std=c++20", "-fopenmp", *build.cflags,
               "-DTORCH_EXTENSION_NAME=check", "-DTORCH_API_INCLUDE_EXTENSION_H",
               *(f"-isystem{p}" for p in includes), str(kernels / source)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        return "" if r.returncode == 0 else f"{build.name}/{source}:\n{r.stderr[-3000:]}"

    jobs = [(b, s) for b in others for s in b.sources]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        errors = [e for e in pool.map(lambda job: syntax_check(*job), jobs) if e]
    assert not errors, "\n".join(errors)
