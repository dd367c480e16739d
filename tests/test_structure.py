"""The shape of the product code (issue 23): no module over 600 lines, no class over 450,
and no import cycle, counting the imports inside functions. A cycle is found over the whole
import graph and reported under the package of its members."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The product's packages: the top-level folders with an ``__init__.py``, tests and benches
#: aside, and fim/ (links to the others, the one name they are imported by).
PACKAGES = sorted(p.parent.name for p in ROOT.glob("*/__init__.py")
                  if p.parent.name not in {"tests", "bench", "fim"})
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 450
#: (test, package) pairs still being reshaped under issue 23: strict, so each mark must go
#: with the change that makes its test pass.
PENDING: set[tuple[str, str]] = set()


def packages(test: str) -> list:
    return [pytest.param(p, marks=pytest.mark.xfail(strict=True, reason="issue 23, pending"))
            if (test, p) in PENDING else p for p in PACKAGES]


def modules() -> dict[str, Path]:
    """Every product module by its dotted name (a package by its own name)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The product modules that module ``name`` imports anywhere in it: ``from P import n``
    counts as P.n when that is a module, else as P."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [[alias.name.removeprefix("fim.")] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (node.module or "").removeprefix("fim.")
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            candidates = [[f"{base}.{alias.name}", base] for alias in node.names]
        else:
            continue
        for options in candidates:
            target = next((o for o in options if o in known), None)
            if target is None:  # a name inside a module: its nearest known parent
                target = options[-1]
                while target and target not in known:
                    target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def import_cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    known = modules()
    graph = {name: set(imported_modules(name, path, known)) for name, path in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for succ in edges:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
    return cycles


def owned_by(package: str) -> dict[str, Path]:
    return {n: p for n, p in modules().items() if n.split(".")[0] == package}


@pytest.mark.parametrize("package", packages("modules"))
def test_modules_are_small(package: str) -> None:
    lines = {n: len(p.read_text().splitlines()) for n, p in owned_by(package).items()}
    assert {n: count for n, count in lines.items() if count > MAX_MODULE_LINES} == {}


@pytest.mark.parametrize("package", packages("classes"))
def test_classes_are_small(package: str) -> None:
    big = {}
    for name, path in owned_by(package).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > MAX_CLASS_LINES:
                    big[f"{name}.{node.name}"] = length
    assert big == {}


@pytest.mark.parametrize("package", packages("cycles"))
def test_no_import_cycle(package: str) -> None:
    assert [c for c in import_cycles() if c[0].split(".")[0] == package] == []


def test_cycle_finder_counts_imports_inside_functions(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("def f():\n    from pkg import b\n")
    (tmp_path / "b.py").write_text("from pkg.a import f\n")
    known = {"pkg.a": tmp_path / "a.py", "pkg.b": tmp_path / "b.py", "pkg": tmp_path / "a.py"}
    assert set(imported_modules("pkg.a", known["pkg.a"], known)) == {"pkg.b"}
    assert set(imported_modules("pkg.b", known["pkg.b"], known)) == {"pkg.a"}
