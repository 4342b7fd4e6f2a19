"""No import cycle among the product's modules (balancer, simulator, workers).

The graph is built from the source with the standard library's ``ast``: every ``import`` and
``from ... import`` counts, wherever it is (module level, inside a function, under
``TYPE_CHECKING``), since a deferred import only hides a cycle, it does not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("balancer", "simulator", "workers", "common")


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The known modules that ``module`` imports anywhere in its source."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # from pkg import mod
    return {name for name in found if name in known and name != module}


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    modules = module_files(root, packages)
    known = set(modules)
    return {module: imported(module, path, known) for module, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph[node]:
                        found.append(sorted(component))
    return found


def describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & members))}" for m in component)


def test_the_graph_sees_what_it_should(tmp_path: Path) -> None:
    """The finder itself: relative, absolute, deferred and TYPE_CHECKING imports all count."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def f():\n    import pkg.c\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n")
    (package / "d.py").write_text("from .c import y\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg", "pkg.b"}
    assert graph["pkg.b"] == {"pkg.c"}
    assert graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.d"] == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_the_product_has_modules() -> None:
    graph = import_graph(ROOT, PACKAGES)
    for package in PACKAGES[:3]:
        assert sum(m.startswith(package + ".") for m in graph) >= 5, package
    assert "balancer.config" in graph["balancer.app"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package: str) -> None:
    graph = import_graph(ROOT, PACKAGES)
    found = [c for c in cycles(graph) if any(m.split(".")[0] == package for m in c)]
    assert not found, "import cycles: " + " | ".join(describe(graph, c) for c in found)


def test_the_three_parts_never_import_each_other() -> None:
    """balancer, simulator and workers meet only through docs/CONTRACTS.md; what they share
    (units, version, the atomic writer) is in common, which imports none of them."""
    graph = import_graph(ROOT, PACKAGES)
    crossing = sorted((m, d) for m, deps in graph.items() for d in deps
                      if d.split(".")[0] != m.split(".")[0] and d.split(".")[0] != "common")
    assert crossing == []
    assert all(d.startswith("common") for m, deps in graph.items() if m.startswith("common") for d in deps)


def test_no_test_module_imports_another() -> None:
    """Shared test code lives in tests/helpers (or a helper module), never in a test_*.py."""
    modules = module_files(ROOT, ("tests",))
    graph = {m: imported(m, p, set(modules)) for m, p in modules.items()}
    offenders = sorted(f"{m} imports {t}" for m, targets in graph.items() for t in targets
                       if t.rsplit(".", 1)[-1].startswith("test_"))
    assert not offenders, offenders
    assert "tests.helpers.ktls_peer" in graph["tests.integration.test_ktls_peer"]
