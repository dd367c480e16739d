"""The documentation stays navigable: a README short enough to read first (issue 23),
no relative link in README.md or docs/ that leads nowhere, and a module map in
docs/architecture.md that names every module of the product and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 250
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: ``[text](target)``, the target up to a space (a title) or the closing parenthesis.
_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)")
_FENCED = re.compile(r"^\s*(```|~~~).*?^\s*\1", re.S | re.M)
#: Inline code, which may wrap onto the next line of its paragraph.
_CODE = re.compile(r"`[^`]*`")


def _links(text: str) -> list[str]:
    """The link targets of a Markdown text, outside code."""
    return _LINK.findall(_CODE.sub("", _FENCED.sub("", text)))


def _is_relative(target: str) -> bool:
    return not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) and not target.startswith("#")


#: The product's folders (the module map's top level also names fim/, tests/, bench/).
PRODUCT = ("osutil", "fimfs", "sandbox", "app", "cli")
#: A name line of the map: indentation, then ``name.py`` or ``name/``, then two spaces.
_MAP_NAME = re.compile(r"^( *)(\w+(?:\.py|/))(?: {2,}|$)")


def module_map(text: str) -> set[str]:
    """The paths the module map names: ``fimfs/dwarfs/reader.py``, ``fimfs/dwarfs/``..."""
    block = text.split("## Module map", 1)[1].split("```", 2)[1]
    named: set[str] = set()
    parents: list[tuple[int, str]] = []
    for line in block.splitlines():
        m = _MAP_NAME.match(line)
        if m is None:
            continue
        indent, name = len(m[1]), m[2]
        while parents and parents[-1][0] >= indent:
            parents.pop()
        if indent != (parents[-1][0] + 2 if parents else 0):
            continue  # a continuation line that happens to start with a name
        path = "".join(p for _, p in parents) + name
        named.add(path)
        if name.endswith("/"):
            parents.append((indent, name))
    return named


def test_module_map_names_every_module() -> None:
    named = module_map((ROOT / "docs" / "architecture.md").read_text())
    modules = {str(p.relative_to(ROOT)) for folder in PRODUCT
               for p in (ROOT / folder).rglob("*.py") if p.name != "__init__.py"}
    assert sorted(modules - named) == [], "modules missing from docs/architecture.md"
    stale = [p for p in named if not (ROOT / p).exists()]
    assert stale == [], "docs/architecture.md names what does not exist"


def test_module_map_reads_the_tree() -> None:
    text = ("## Module map\n```\nfimfs/   x\n  dwarfs/   y\n    reader.py   z\n"
            "                       reader.py  continuation\n  union.py  u\ncli/\n```\n")
    assert module_map(text) == {"fimfs/", "fimfs/dwarfs/", "fimfs/dwarfs/reader.py",
                                "fimfs/union.py", "cli/"}


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move details to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_exist(page: Path) -> None:
    broken = [t for t in _links(page.read_text()) if _is_relative(t)
              and not (page.parent / t.split("#", 1)[0]).exists()]
    assert not broken, f"{page.relative_to(ROOT)}: links to nothing: {broken}"


def test_links_are_found() -> None:
    """The link finder itself: inline links count, code and absolute URLs do not."""
    text = ("[a](docs/x.md) `[b](no.md)` [c](https://e.org) [d](#top)\n```\n[e](f.md)\n```\n"
            "`x = [g](h,\ni)` [j](k.md#part)\n")
    assert [t for t in _links(text) if _is_relative(t)] == ["docs/x.md", "k.md#part"]
