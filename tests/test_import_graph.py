"""The package's import graph, read from the source: no cycle anywhere, and every import points down the floors.

Every ``import`` counts, at module level or inside a function: an import placed in a function still ties the two
modules together, it only hides the edge. ``from pkg import name`` is an edge to ``pkg.name`` when that is a module
of the package, else to ``pkg``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Packages are floors (docs/ARCHITECTURE.md, STYLE.md): an import only ever points to its own floor or below.
FLOORS = {
    "errors": 0,
    "atomic_file": 0,
    "domains": 0,
    "quantizers": 0,
    "optim": 0,
    "data": 0,
    "nn": 1,
    "models": 1,
    "metrics": 1,
    "deploy": 1,
    "": 2,  # the top-level package re-exports the core and deploy, and load_model (imports training on use)
    "training": 2,
    "experiments": 3,
    "cli": 4,
}


def modules(src: Path = SRC) -> dict[str, Path]:
    """``{"torchbop.nn.layers": path, "torchbop.nn": path/__init__.py, ...}``."""
    found = {}
    for path in (src / "torchbop").rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parent = node.module or ""
            if node.level:
                parent = ".".join(base[: len(base) - node.level + 1] + ([parent] if parent else []))
            targets = [
                f"{parent}.{alias.name}" if f"{parent}.{alias.name}" in known else parent for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import torchbop.nn.layers.x` style: the longest module
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
    return edges


def graph(src: Path = SRC) -> dict[str, set[str]]:
    known = modules(src)
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan), as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [_closed_path(component, edges) for component in components]


def _closed_path(component: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(edges[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    following.append(w)
        frontier = following
    raise AssertionError("not a cycle")


def floor(module: str) -> int:
    return FLOORS[module.split(".")[1] if "." in module else ""]


# ----------------------------------------------------------------------------------------------------------------
def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_imports_point_down_the_floors():
    edges = graph()
    upward = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets if floor(b) > floor(a))
    assert not upward, "imports pointing up a floor:\n" + "\n".join(upward)


def test_every_package_has_a_floor():
    assert {m.split(".")[1] if "." in m else "" for m in modules()} <= set(FLOORS)


@pytest.mark.parametrize("where", ["top", "function"])
def test_the_checker_finds_a_cycle(tmp_path, where):
    """The test above could fail: a two-module package whose cycle is hidden in a function is caught."""
    pkg = tmp_path / "torchbop" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "torchbop" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from torchbop.sub import b\n")
    body = "from . import a\n" if where == "top" else "def f():\n    from torchbop.sub.a import x\n"
    (pkg / "b.py").write_text(body)
    assert cycles(graph(tmp_path)) == [["torchbop.sub.a", "torchbop.sub.b", "torchbop.sub.a"]]


def test_core_does_not_import_deploy():
    """``torchbop.deploy`` sits beside models on floor 1; only the top-level package and upper floors use it."""
    core = ("quantizers", "optim", "data", "nn", "models", "metrics", "errors")
    edges = graph()
    found = sorted(
        f"{a} -> {b}"
        for a, targets in edges.items()
        if a.split(".")[1:2] and a.split(".")[1] in core
        for b in targets
        if b.startswith("torchbop.deploy")
    )
    assert not found, "core modules importing torchbop.deploy:\n" + "\n".join(found)
