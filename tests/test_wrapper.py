"""Views over a Filesystem (fimfs.wrapper): every capability flag of the vfs survives
every view and every stack app.stack builds; what a view does not override is the
inner filesystem's."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest

from fim.app.stack import build_stack
from fim.fimfs.casefold import CaseFold
from fim.fimfs.dwarfs.writer import write_image
from fim.fimfs.owners import OwnerView
from fim.fimfs.vfs import Filesystem, StatFs

#: Enumerated from the vfs, so a flag added there is covered here.
FLAGS = [name for name, value in vars(Filesystem).items() if isinstance(value, bool)]
VIEWS = {"OwnerView": lambda fs: OwnerView(fs, 1000, 1000, inside=(0, 0)), "CaseFold": CaseFold}


def own(view: Filesystem, flag: str) -> bool | None:
    """The value a view sets for ``flag`` itself (a bool class attribute), else None."""
    for klass in type(view).__mro__:
        if klass is Filesystem:
            return None
        value = vars(klass).get(flag)
        if isinstance(value, bool):
            return value
    return None


def test_flags_are_enumerated() -> None:
    assert {"case_insensitive", "reads_by_path", "handles_need_release",
            "chown_accepts_unchanged"} <= set(FLAGS)


@pytest.mark.parametrize("make", VIEWS.values(), ids=VIEWS.keys())
@pytest.mark.parametrize("flag", FLAGS)
def test_each_view_forwards_each_flag(make, flag: str) -> None:
    for value in (True, False):
        inner = Filesystem()
        setattr(inner, flag, value)
        view = make(inner)
        mine = own(view, flag)
        assert getattr(view, flag) is (value if mine is None else mine), (flag, value)


@pytest.mark.parametrize("make", VIEWS.values(), ids=VIEWS.keys())
def test_views_forward_writable_and_unoverridden_methods(make) -> None:
    calls = []

    class Inner(Filesystem):
        writable = True  # type: ignore[assignment]

        def statfs(self) -> StatFs:
            calls.append("statfs")
            return StatFs(4096, 4096, 1, 1, 1, 1, 1)

        def unchanging(self, fh: int) -> bool:
            return fh == 7

    view = make(Inner())
    assert view.writable
    assert view.unchanging(7) and not view.unchanging(8)
    view.statfs()
    assert calls == ["statfs"]


def test_casefold_translates_every_path() -> None:
    """A view that rewrites paths overrides every vfs method taking one (or names the
    vfs default it relies on): a forwarded one would get the typed spelling."""
    takes_path = [name for name, fn in vars(Filesystem).items()
                  if inspect.isfunction(fn) and {"path", "old", "existing"}
                  & set(inspect.signature(fn).parameters)]
    assert "read_spans" in takes_path
    assert [name for name in takes_path if name not in vars(CaseFold)] == []


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    (root / "Dir").mkdir()
    (root / "Dir/File").write_text("x")
    out = root.parent / "layer.dwarfs"
    write_image(root, out)
    return out


@pytest.mark.parametrize("casefold", [False, True], ids=["", "casefold"])
@pytest.mark.parametrize("owner", [None, (1000, 1000)], ids=["", "owner"])
@pytest.mark.parametrize("writable", [False, True], ids=["ro", "rw"])
def test_stack_flags(layer: Path, tmp_path: Path, casefold: bool,
                     owner: tuple[int, int] | None, writable: bool) -> None:
    """Each flag of the stack is its union's, unless a view in between sets it."""
    upper = tmp_path / "up" if writable else None
    if upper is not None:
        upper.mkdir()
    fs = build_stack([layer], upper, casefold, owner=owner, inside=(0, 0) if owner else None)
    try:
        views = []
        below = fs
        while isinstance(below, (OwnerView, CaseFold)):
            views.append(below)
            below = below.inner
        assert len(views) == casefold + (owner is not None)
        for flag in FLAGS:
            want = getattr(below, flag)
            for view in reversed(views):
                mine = own(view, flag)
                want = want if mine is None else mine
            assert getattr(fs, flag) is want, flag
        assert fs.case_insensitive is casefold
        assert fs.writable is writable
        assert fs.read("/dir/file" if casefold else "/Dir/File", 1, 0, fs.open(
            "/dir/file" if casefold else "/Dir/File", os.O_RDONLY)) == b"x"
    finally:
        fs.close()
