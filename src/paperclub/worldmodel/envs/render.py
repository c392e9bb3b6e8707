"""Tiny numpy rasteriser for the environments: filled discs and rotated rectangles on an RGB canvas.

`fill_*` paint whole pixels (a pixel is in or out: shapes jump a pixel at a time). `*_coverage` give each pixel
the fraction of it a shape covers (a linear ramp one pixel wide across the edge), for antialiased frames in which
a shape that moves a tenth of a pixel changes the image; `blend` paints with such a coverage."""

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


def disc_coverage(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, r: float, pixel: float) -> np.ndarray:
    """Fraction of each pixel (side `pixel` world units) inside the disc, approximated by the signed distance of
    its centre to the circle: 1 a half pixel inside, 0 a half pixel outside, linear between."""
    dist = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
    return np.clip((r - dist) / pixel + 0.5, 0.0, 1.0)


def rect_coverage(
    xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, half_w: float, half_h: float, angle: float, pixel: float
) -> np.ndarray:
    """As `disc_coverage`, for the rectangle of `fill_rect` (the product of the two edge ramps)."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = xs - cx, ys - cy
    u, v = c * dx + s * dy, -s * dx + c * dy
    return np.clip((half_w - np.abs(u)) / pixel + 0.5, 0.0, 1.0) * np.clip((half_h - np.abs(v)) / pixel + 0.5, 0.0, 1.0)


def blend(img: np.ndarray, coverage: np.ndarray, color) -> np.ndarray:
    """img (float, H x W x 3) painted with `color` at opacity `coverage` (H x W), in place."""
    a = coverage[..., None]
    img *= 1.0 - a
    img += a * np.asarray(color, dtype=img.dtype)
    return img


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
