"""Coordinate-wise local search over log grids of hyperparameters, with a certificate of local optimality.

The paper tunes each recipe this way: from a start point on the grid, evaluate the neighbours one grid step away
along each axis (six of them for three axes), move to the best neighbour if it beats the current point, and stop
when none does. The point where it stops is *certified*: every neighbour was run and none was better.

The search keeps no state of its own. `walk` replays it from the start against a table of finished results, so a
killed sweep, or one that gained results from elsewhere, resumes exactly where the evidence leads: it returns
either the points still to run before the walk can take its next step, or the certified point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from paperclub.errors import UserError

Point = tuple[tuple[str, float], ...]  # ((axis, value), ...) in axis order: hashable


@dataclass(frozen=True)
class Walk:
    """Where a search stands: `pending` points must be run before it can move; `certified` is set when it stopped.
    `path` is the sequence of accepted points from the start."""

    path: list[Point]
    pending: list[Point]
    certified: Point | None


def point(values: Mapping[str, float], axes: Mapping[str, Sequence[float]]) -> Point:
    return tuple((name, values[name]) for name in axes)


def neighbours(p: Point, axes: Mapping[str, Sequence[float]]) -> list[Point]:
    """The points one grid step away along each axis (axes with one value have none)."""
    out = []
    for i, (name, value) in enumerate(p):
        grid = list(axes[name])
        j = grid.index(value)
        for k in (j - 1, j + 1):
            if 0 <= k < len(grid):
                out.append(p[:i] + ((name, grid[k]),) + p[i + 1:])
    return out


def check_start(start: Mapping[str, float], axes: Mapping[str, Sequence[float]]) -> None:
    for name, grid in axes.items():
        if not grid or list(grid) != sorted(grid) or len(set(grid)) != len(grid):
            raise UserError(f"search axis {name!r}: give distinct values in increasing order, got {list(grid)}")
        if name not in start or start[name] not in grid:
            raise UserError(f"search start {name}={start.get(name)!r} is not on its grid {list(grid)}")


def walk(start: Mapping[str, float], axes: Mapping[str, Sequence[float]],
         loss: Callable[[Point], float | None], min_improvement: float = 0.0) -> Walk:
    """Replay the local search against `loss` (None for a point not yet run)."""
    check_start(start, axes)
    current = point(start, axes)
    path = [current]
    while True:
        around = neighbours(current, axes)
        pending = [p for p in [current, *around] if loss(p) is None]
        if pending:
            return Walk(path, pending, None)
        best = min(around, key=loss, default=current)
        if loss(best) < loss(current) - min_improvement:
            current = best
            path.append(current)
            continue
        return Walk(path, [], current)
