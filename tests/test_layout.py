"""The package layout: no module imports one that imports it back (lazy, function-level imports included), and
each system keeps to its own sub-package."""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the paperclub modules it imports anywhere in its body."""
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_sees_a_lazy_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_systems_do_not_import_each_others_internals():
    # the engine's sub-packages (engine, speculative, distill, bench, serve) form one system; other systems may use
    # the engine itself (`paperclub.engine`: scaling generates teacher text with it) but no other system's internals
    systems = {"worldmodel", "bounds", "scaling", "dmpc"}
    engine_side = {"engine", "speculative", "distill", "bench", "serve", "ssd"}
    for name, edges in import_graph().items():
        parts = name.split(".")
        if len(parts) < 2:
            continue
        mine = parts[1]
        for target in edges:
            theirs = target.split(".")[1] if target.count(".") else ""
            if mine in systems:
                assert theirs not in (engine_side - {"engine"}) | (systems - {mine}), f"{name} imports {target}"
            if mine in engine_side:
                assert theirs not in systems, f"{name} imports {target}"


def test_the_old_ssd_path_still_re_exports_the_api():
    import paperclub.engine

    ssd = importlib.import_module("paperclub.ssd")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ssd.SamplingParams is paperclub.engine.SamplingParams
        assert ssd.SSDConfig is paperclub.engine.SSDConfig
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    with pytest.raises(AttributeError):
        ssd.Engine  # noqa: B018  (only the public API is re-exported)
