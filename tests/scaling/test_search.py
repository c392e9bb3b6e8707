from __future__ import annotations

import itertools

import pytest

from paperclub.errors import UserError
from paperclub.scaling.search import neighbours, point, walk

AXES = {"lr": (1e-3, 3e-3, 1e-2, 3e-2), "weight_decay": (0.1, 0.2, 0.4, 0.8, 1.6), "epochs": (1, 2, 4, 8, 16)}


def surface(p):
    """A bumpy synthetic loss: a bowl around (lr 1e-2, wd 0.4, epochs 4) plus a local minimum at the corner
    (lr 1e-3, wd 0.1, epochs 1)."""
    i, j, k = (AXES[name].index(value) for name, value in p)
    bowl = (i - 2) ** 2 + 0.7 * (j - 2) ** 2 + 0.5 * (k - 2) ** 2
    return bowl - (6.0 if (i, j, k) == (0, 0, 0) else 0.0)


def run_to_end(start, loss_fn):
    """Drive the search as the sweep does: run whatever is pending until it certifies."""
    done, runs = {}, 0
    while True:
        w = walk(start, AXES, lambda p: done.get(p))
        if w.certified is not None:
            return w, runs
        for p in w.pending:
            done[p] = loss_fn(p)
            runs += 1


def test_search_stops_at_a_certified_point():
    w, runs = run_to_end({"lr": 3e-2, "weight_decay": 1.6, "epochs": 16}, surface)
    best = w.certified
    assert dict(best) == {"lr": 1e-2, "weight_decay": 0.4, "epochs": 4}  # the bowl's minimum
    assert all(surface(n) >= surface(best) for n in neighbours(best, AXES))  # the certificate
    assert len(neighbours(best, AXES)) == 6
    # far fewer runs than the 100-point grid, and the path only ever went down
    assert runs < 40
    assert all(surface(a) > surface(b) for a, b in itertools.pairwise(w.path))


def test_search_certifies_a_local_minimum_it_starts_in():
    w, runs = run_to_end({"lr": 1e-3, "weight_decay": 0.1, "epochs": 1}, surface)
    assert dict(w.certified) == {"lr": 1e-3, "weight_decay": 0.1, "epochs": 1}
    assert runs == 4  # the start and its three in-grid neighbours


def test_search_replays_from_results_and_asks_only_for_missing_points():
    start = {"lr": 3e-3, "weight_decay": 0.2, "epochs": 2}
    w = walk(start, AXES, lambda p: None)
    assert w.pending[0] == point(start, AXES) and len(w.pending) == 7 and w.certified is None
    known = {p: surface(p) for p in w.pending[:3]}
    w2 = walk(start, AXES, known.get)
    assert w2.pending == w.pending[3:]


def test_bad_grids_and_starts_are_user_errors():
    with pytest.raises(UserError, match="not on its grid"):
        walk({"lr": 5e-3, "weight_decay": 0.1, "epochs": 1}, AXES, lambda p: 0.0)
    with pytest.raises(UserError, match="increasing"):
        walk({"lr": 1e-3}, {"lr": (1e-2, 1e-3)}, lambda p: 0.0)
