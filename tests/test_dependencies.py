"""The direction of dependency (ARCHITECTURE.md): fimfs and sandbox never import app or
cli, nor each other; app never imports cli; osutil imports nothing of fim. Every import
counts, those inside functions included: each module's syntax tree is walked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What each library may not import.
FORBIDDEN = {
    "osutil": {"fimfs", "sandbox", "app", "cli"},
    "fimfs": {"sandbox", "app", "cli"},
    "sandbox": {"fimfs", "app", "cli"},
    "app": {"cli"},
}


def imported(source: str, package: tuple[str, ...]) -> set[str]:
    """The top-level packages that a module of ``package`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.removeprefix("fim.").split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: within the module's own library
                found.add(package[0])
            elif node.module:
                found.add(node.module.removeprefix("fim.").split(".")[0])
    return found


def imports_of(path: Path) -> set[str]:
    package = path.relative_to(ROOT).parts[:-1]
    return imported(path.read_text(), package)


@pytest.mark.parametrize("library", FORBIDDEN)
def test_dependency_direction(library: str) -> None:
    modules = sorted((ROOT / library).rglob("*.py"))
    assert modules
    bad = {str(p.relative_to(ROOT)): sorted(imports_of(p) & FORBIDDEN[library]) for p in modules}
    assert {k: v for k, v in bad.items() if v} == {}


def test_imports_inside_functions_count() -> None:
    source = "import os\ndef f():\n    from cli import log\n    from .x import y\n"
    assert imported(source, ("sandbox", "sub")) == {"os", "cli", "sandbox"}
