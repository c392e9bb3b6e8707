"""Range checks for demo configs: a bad value raises a UserError that names the config field."""

from __future__ import annotations

import math

import numpy as np

from paperclub.errors import UserError


def require_int(owner: str, name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not lo <= value <= hi:
        raise UserError(f"{owner}.{name} must be an integer in [{lo}, {hi}], got {value!r}")


def require_float(owner: str, name: str, value: object, lo: float, hi: float, lo_open: bool = False) -> None:
    ok = isinstance(value, int | float | np.floating) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > hi or value < lo or (lo_open and value == lo):
        bound = f"> {lo}" if lo_open else f">= {lo}"
        raise UserError(f"{owner}.{name} must be a finite number {bound} and <= {hi}, got {value!r}")
