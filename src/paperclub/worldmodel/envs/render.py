"""Tiny numpy rasteriser for the environments: filled discs and rotated rectangles on an RGB canvas."""

from __future__ import annotations

import numpy as np


def pixel_centres(size: int, world: float) -> tuple[np.ndarray, np.ndarray]:
    """World coordinates (x, y) of each pixel centre of a size x size image covering [0, world]^2.
    Row 0 is the top of the image (largest y)."""
    c = (np.arange(size) + 0.5) * (world / size)
    xs, ys = np.meshgrid(c, c[::-1])
    return xs, ys


def fill_disc(img: np.ndarray, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, r: float, color) -> None:
    img[(xs - cx) ** 2 + (ys - cy) ** 2 <= r * r] = color


def fill_rect(
    img: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    cx: float,
    cy: float,
    half_w: float,
    half_h: float,
    angle: float,
    color,
) -> None:
    """Rectangle centred at (cx, cy), half sizes (half_w, half_h), rotated by `angle` radians."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = xs - cx, ys - cy
    u = c * dx + s * dy  # pixel in the rectangle's own frame
    v = -s * dx + c * dy
    img[(np.abs(u) <= half_w) & (np.abs(v) <= half_h)] = color
