"""The documentation stays navigable: a README short enough to read first (issue 23),
and no relative link in README.md or docs/ that leads nowhere."""

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
