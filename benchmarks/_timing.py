"""Shared timing helpers for the CPU benchmarks (shared, noisy machine: interleave + medians)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_once(fn: Callable[[], object], inner: int) -> float:
    """Seconds per call, averaged over `inner` back-to-back calls."""
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def calibrate(fn: Callable[[], object], target_s: float = 0.05) -> int:
    """Number of inner calls so that one timed block lasts about `target_s`."""
    fn()
    fn()
    t = time_once(fn, 3)
    return max(1, int(target_s / max(t, 1e-7)))


def bench_interleaved(
    fns: dict[str, Callable[[], object]], reps: int = 15, target_s: float = 0.05, warmup: int = 3
) -> dict[str, float]:
    """Median seconds/call for each fn, measured round-robin so that noise from the other tenants of the
    machine hits every candidate alike."""
    inner = {k: calibrate(f, target_s) for k, f in fns.items()}
    for f in fns.values():
        for _ in range(warmup):
            f()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            samples[k].append(time_once(f, inner[k]))
    return {k: statistics.median(v) for k, v in samples.items()}
