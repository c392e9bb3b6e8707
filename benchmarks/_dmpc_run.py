"""Shared by the D-MPC benchmark scripts: run a `paperclub` command in-process and log it, and name the CPU."""

from __future__ import annotations

import shlex
import time
from datetime import date

from paperclub.cli import main as cli


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def run_cli(argv: list[str], log: list[dict]) -> None:
    """Run `paperclub ARGV` (printed first); exit on failure; append the command, its seconds and the date to log."""
    line = "paperclub " + shlex.join(argv)
    print("$", line, flush=True)
    t0 = time.perf_counter()
    if cli(argv) != 0:
        raise SystemExit(f"failed: {line}")
    log.append({"command": line, "seconds": round(time.perf_counter() - t0, 1), "date": date.today().isoformat()})
