"""The CPU kernel builds compile. The kernel tests skip where a build is missing and the engine falls back to torch's
ops with a warning, so without these checks a compile error would pass the suite unnoticed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
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


def test_a_lock_left_by_a_killed_build_does_not_hang_the_next_one():
    """torch's build lock is a plain file; a build killed midway left one behind and every later process
    (a whole CI run) waited on it forever."""
    build = ck.kernel_build(ck.cpu_flags())
    if build is None or ck.load_build(build) is None:
        pytest.skip("no CPU kernel build on this machine")
    (ck.build_directory(build) / "lock").touch()  # what a SIGKILL during compilation leaves
    code = "from paperclub.nn.cpu_kernels import cpu_kernel; assert cpu_kernel() is not None"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    assert not (ck.build_directory(build) / "lock").exists()


def test_a_build_waits_for_a_live_builder_and_not_for_a_dead_one(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1] + '/paperclub.lock', 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(60)"), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="another process held"):
            with ck.build_lock(tmp_path, wait_s=0.5):
                pass
        assert time.monotonic() - t0 >= 0.5
    finally:
        holder.kill()
        holder.wait()
    with ck.build_lock(tmp_path, wait_s=5.0):  # the dead holder's lock went with it
        pass
