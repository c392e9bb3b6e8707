"""Device names from the command line and the API ("auto", "cpu", "cuda", "cuda:N") to torch devices."""

from __future__ import annotations

import torch

from paperclub.errors import UserError


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" = CUDA when there is one, else the CPU; an unknown or missing device is a clear error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but no CUDA GPU is visible: use --device cpu")
    return dev


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux): every measured figure names it."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
