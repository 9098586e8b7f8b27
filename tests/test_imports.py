"""The package's import graph: no cycle, and no import from a lower stage to a higher one.

Every module's AST is read (imports inside functions included, so a lazy import cannot hide a
cycle), each import is resolved to the package module it names, and the graph is checked
against STAGES: the data flow of architecture.md, read as "who may import whom". A module may
import modules of its own stage or of lower stages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hptransfer

PACKAGE = Path(hptransfer.__file__).parent

# low -> high. Keyed by the first name under hptransfer (a module or a subpackage). store is
# low: train, the sweep, analysis and the report all read or write runs through it, and it
# imports none of them.
STAGES: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("config", "store", "atomic", "locks"),
    ("param", "optim", "models", "data", "sources", "tokenizers"),
    ("assemble", "probes", "distributed", "trackers", "checkpoint"),
    ("train",),
    ("analysis",),
    ("plots", "report", "plan"),
    ("sweep", "experiments", "recipes"),
    ("cli", "__init__", "__main__"),
)

# Known exceptions to the stage table (none left: the branches that needed them have merged).
ALLOWED: set[tuple[str, str]] = set()

# Modules placed by their own dotted name rather than their package's: the optimizer registry
# is a torch-free table of names and lazy references that config validates against.
PLACED = {"optim.registry": 1}


def _stage(module: str) -> int:
    parts = module.split(".")
    if ".".join(parts[1:]) in PLACED:
        return PLACED[".".join(parts[1:])]
    key = parts[1] if len(parts) > 1 else "__init__"
    for i, names in enumerate(STAGES):
        if key in names:
            return i
    raise AssertionError(f"{module}: no stage for {key!r}; add it to STAGES in {__file__}")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules that ``name`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package of this module
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # "from pkg import mod" names a module; "from mod import obj" names mod
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:  # import a.b.c of a non-module c -> a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_lazy_and_relative_imports() -> None:
    edges = graph()
    assert "hptransfer.train" in edges["hptransfer.cli.train"]  # imported inside a function
    assert "hptransfer.assemble" in edges["hptransfer.train"]
    assert "hptransfer.probes.alignment" in edges["hptransfer.analysis.alignment"]
    assert "hptransfer.data" in edges["hptransfer.assemble"]  # from hptransfer import data


def test_allowed_edges_still_exist() -> None:
    """An allowed edge that is gone must leave ALLOWED too, so the list only shrinks."""
    edges = graph()
    assert sorted((a, b) for a, b in ALLOWED if b not in edges.get(a, ())) == []


def test_no_import_cycle() -> None:
    edges = graph()
    for a, b in ALLOWED:
        edges[a].discard(b)
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_no_import_from_a_lower_stage_to_a_higher_one() -> None:
    back = sorted(
        f"{a} (stage {_stage(a)}) imports {b} (stage {_stage(b)})"
        for a, targets in graph().items()
        for b in targets
        if _stage(b) > _stage(a) and (a, b) not in ALLOWED
    )
    assert not back, "\n".join(back)


@pytest.mark.parametrize(
    "edges,expected",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_cycle_finder(edges: dict[str, set[str]], expected: list[str] | None) -> None:
    assert _cycle(edges) == expected
