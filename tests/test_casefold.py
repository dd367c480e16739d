"""CaseFold as a plain object (no FUSE): over a bare DwarFS layer and over a writable host tree."""

from __future__ import annotations

import errno
import os
import random
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fim.fimfs.casefold import CaseFold
from fim.fimfs.dwarfs import DwarfsImage
from fim.fimfs.dwarfs.writer import write_image
from fim.fimfs.hostdir import HostDir
from fim.fimfs.union import Union
from fim.fimfs.vfs import RENAME_NOREPLACE, Filesystem

ROUNDS = 200  # of simultaneous creations
NON_UTF8 = b"caf\xe9"  # Latin-1 "café": not valid UTF-8
NON_UTF8_UPPER = b"CAF\xe9"


def _populate(root: Path) -> None:
    """A tree with case twins, Unicode names, names that are not UTF-8 and a deep path."""
    (root / "Makefile").write_bytes(b"upper M")
    (root / "makefile").write_bytes(b"lower m")
    (root / "README.md").write_bytes(b"readme")
    (root / "STRASSE").write_bytes(b"ascii twin")
    (root / "Straße").write_bytes(b"eszett twin")
    (root / "de").mkdir()
    (root / "de" / "Straße").write_bytes(b"eszett alone")
    (root / "café").write_bytes(b"utf-8 cafe")
    rootb = os.fsencode(root)
    for name in (NON_UTF8, NON_UTF8_UPPER):
        with open(os.path.join(rootb, name), "wb") as f:
            f.write(name)
    deep = root / "Docs" / "Deep" / "Deeper"
    deep.mkdir(parents=True)
    (deep / "File.TXT").write_bytes(b"deep")
    (root / "Link").symlink_to("Docs/Deep")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DwarFS image of the tree."""
    base = tmp_path_factory.mktemp("casefold-layer")
    src = base / "src"
    src.mkdir()
    _populate(src)
    write_image(src, base / "layer.dwarfs")
    return base / "layer.dwarfs"


@pytest.fixture(scope="module")
def layer(image: Path) -> Iterator[CaseFold]:
    """CaseFold over a bare DwarFS layer."""
    fs = CaseFold(DwarfsImage.from_path(image))
    yield fs
    fs.close()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[tuple[Path, CaseFold]]:
    """CaseFold over a writable HostDir (an empty directory) and that directory."""
    fs = CaseFold(HostDir(str(tmp_path)))
    yield tmp_path, fs
    fs.close()


def _cat(fs: Filesystem, path: str) -> bytes:
    fh = fs.open(path, os.O_RDONLY)
    try:
        return fs.read(path, 1 << 16, 0, fh)
    finally:
        fs.release(path, fh)


def _errno(func, *args) -> int:  # noqa: ANN001 - any callable
    with pytest.raises(OSError) as e:
        func(*args)
    return e.value.errno


def _create(fs: Filesystem, path: str, data: bytes = b"", flags: int = 0) -> None:
    fh = fs.create(path, 0o644, os.O_WRONLY | os.O_CREAT | flags)
    try:
        if data:
            fs.write(path, data, 0, fh)
    finally:
        fs.release(path, fh)


# -- the read side, over a bare DwarFS layer -----------------------------------------------


def test_layer_lookup_ignores_case(layer: CaseFold) -> None:
    assert layer.getattr("/readme.MD") == layer.inner.getattr("/README.md")
    assert _cat(layer, "/readme.md") == b"readme"
    assert _cat(layer, "/docs/DEEP/deeper/file.txt") == b"deep"
    assert _cat(layer, "/DOCS/deep/DeEpEr/FILE.txt/") == b"deep"  # trailing slash ignored
    assert layer.readdir("/DOCS/deep") == ["Deeper"]
    assert layer.readlink("/LINK") == "Docs/Deep"
    assert layer.getattr("/").is_dir


def test_layer_errors_are_the_inner_ones(layer: CaseFold) -> None:
    assert _errno(layer.getattr, "/nothere") == errno.ENOENT
    assert _errno(layer.getattr, "/docs/nothere/file.txt") == errno.ENOENT
    assert _errno(layer.getattr, "/readme.md/x") == errno.ENOTDIR
    assert _errno(layer.readdir, "/README.MD") == errno.ENOTDIR
    assert _errno(layer.readlink, "/readme.md") == errno.EINVAL


def test_layer_twins_exact_case_wins_else_bytewise_smallest(layer: CaseFold) -> None:
    assert _cat(layer, "/Makefile") == b"upper M"
    assert _cat(layer, "/makefile") == b"lower m"
    assert _cat(layer, "/MAKEFILE") == b"upper M"  # b"M" < b"m"
    assert _cat(layer, "/makeFILE") == b"upper M"
    names = layer.readdir("/")
    assert "Makefile" in names and "makefile" not in names
    assert sorted(layer.inner.readdir("/")) == sorted([*names, "makefile", "Straße"])


def test_layer_unicode_full_case_folding(layer: CaseFold) -> None:
    # str.casefold equates ß and ss, so "Straße" and "STRASSE" are twins.
    assert _cat(layer, "/de/STRASSE") == b"eszett alone"
    assert _cat(layer, "/DE/strasse") == b"eszett alone"
    assert _cat(layer, "/DE/STRAßE") == b"eszett alone"
    assert _cat(layer, "/Straße") == b"eszett twin"  # exact case
    assert _cat(layer, "/strasse") == b"ascii twin"  # "STRASSE" sorts before "Straße"
    assert _cat(layer, "/straße") == b"ascii twin"
    assert "STRASSE" in layer.readdir("/") and "Straße" not in layer.readdir("/")
    assert _cat(layer, "/CAFÉ") == b"utf-8 cafe"


def test_layer_non_utf8_names_match_exactly(layer: CaseFold) -> None:
    lower, upper = os.fsdecode(NON_UTF8), os.fsdecode(NON_UTF8_UPPER)
    assert _cat(layer, "/" + lower) == NON_UTF8
    assert _cat(layer, "/" + upper) == NON_UTF8_UPPER
    assert _errno(layer.getattr, "/Caf" + lower[3:]) == errno.ENOENT
    assert lower in layer.readdir("/") and upper in layer.readdir("/")
    # Neither is a case variant of the valid "café".
    assert _cat(layer, "/CAFÉ") == b"utf-8 cafe"


def test_layer_is_read_only(layer: CaseFold) -> None:
    assert layer.writable is False
    assert _errno(layer.create, "/New", 0o644, os.O_WRONLY | os.O_CREAT) == errno.EROFS
    assert _errno(layer.mkdir, "/docs/new", 0o755) == errno.EROFS
    assert _errno(layer.unlink, "/README.MD") == errno.EROFS
    assert _errno(layer.rename, "/readme.md", "/README.MD") == errno.EROFS
    assert layer.statfs() == layer.inner.statfs()


class _Counting(Filesystem):
    """Forwards to a Filesystem and counts readdir calls (a spy, not a replacement)."""

    def __init__(self, inner: Filesystem) -> None:
        self.inner = inner
        self.listed: list[str] = []

    def readdir(self, path: str) -> list[str]:
        self.listed.append(path)
        return list(self.inner.readdir(path))

    def getattr(self, path: str):  # noqa: ANN201 - Attr
        return self.inner.getattr(path)


def test_lookups_do_not_rescan(layer: CaseFold) -> None:
    spy = _Counting(layer.inner)
    fs = CaseFold(spy)
    for _ in range(3):
        fs.getattr("/DOCS/deep/DEEPER/file.txt")
        assert _errno(fs.getattr, "/docs/Deep/nothere") == errno.ENOENT
    assert sorted(spy.listed) == ["/", "/Docs", "/Docs/Deep", "/Docs/Deep/Deeper"]
    fs.readdir("/docs")  # listing always reads the inner directory
    assert spy.listed[-1] == "/Docs"


def test_directory_larger_than_the_cache(layer: CaseFold) -> None:
    fs = CaseFold(layer.inner, cache_names=2)
    assert _cat(fs, "/MAKEFILE") == b"upper M"
    assert _cat(fs, "/docs/deep/deeper/FILE.TXT") == b"deep"


# -- the write side, over a host directory -------------------------------------------------


def test_creation_preserves_case(host: tuple[Path, CaseFold]) -> None:
    root, fs = host
    assert fs.writable is True
    _create(fs, "/READme.md", b"hi")
    assert fs.getattr("/readME.md").size == 2
    assert fs.readdir("/") == ["READme.md"]
    assert os.listdir(root) == ["READme.md"]
    fs.mkdir("/hElLo", 0o755)
    fs.mkdir("/HELLO/WoRlD", 0o755)
    assert (root / "hElLo" / "WoRlD").is_dir()
    assert fs.getattr("/hello/world").is_dir
    assert _errno(fs.mkdir, "/HeLlO", 0o755) == errno.EEXIST


def test_create_reaches_the_existing_entry(host: tuple[Path, CaseFold]) -> None:
    root, fs = host
    _create(fs, "/Notes.txt", b"first")
    excl = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    assert _errno(fs.create, "/NOTES.TXT", 0o644, excl) == errno.EEXIST
    _create(fs, "/notes.TXT", b"SECOND")  # no O_EXCL: opens Notes.txt
    assert os.listdir(root) == ["Notes.txt"]
    assert (root / "Notes.txt").read_bytes() == b"SECOND"
    fh = fs.open("/NOTES.txt", os.O_RDWR)
    fs.truncate("/notes.txt", 3, fh)
    fs.release("/notes.txt", fh)
    assert (root / "Notes.txt").read_bytes() == b"SEC"


def test_other_creations_preserve_case_or_hit_the_existing_entry(
    host: tuple[Path, CaseFold],
) -> None:
    root, fs = host
    _create(fs, "/Data.bin", b"x")
    fs.symlink("Data.bin", "/MyLink")
    fs.link("/DATA.BIN", "/HardLink")
    fs.mknod("/MyFifo", stat.S_IFIFO | 0o644, 0)
    assert sorted(os.listdir(root)) == ["Data.bin", "HardLink", "MyFifo", "MyLink"]
    assert fs.readlink("/mylink") == "Data.bin"
    assert fs.getattr("/hardlink").nlink == 2
    assert stat.S_ISFIFO(fs.getattr("/MYFIFO").mode)
    assert _errno(fs.symlink, "x", "/mylink") == errno.EEXIST
    assert _errno(fs.link, "/data.bin", "/HARDLINK") == errno.EEXIST
    assert _errno(fs.mknod, "/myfifo", stat.S_IFIFO | 0o644, 0) == errno.EEXIST
    assert _errno(fs.create, "/missing/File", 0o644, os.O_CREAT) == errno.ENOENT


def test_rename_changes_case(host: tuple[Path, CaseFold]) -> None:
    root, fs = host
    _create(fs, "/readme", b"r")
    fs.rename("/readme", "/README")
    assert os.listdir(root) == ["README"]
    assert fs.readdir("/") == ["README"]
    fs.rename("/ReadMe", "/rEADME")  # from any case
    assert os.listdir(root) == ["rEADME"]
    fs.mkdir("/dir", 0o755)
    _create(fs, "/dir/f", b"in dir")
    fs.rename("/DIR", "/Dir")
    assert sorted(os.listdir(root)) == ["Dir", "rEADME"]
    assert _cat(fs, "/dir/F") == b"in dir"


def test_rename_noreplace_refuses_every_spelling(host: tuple[Path, CaseFold]) -> None:
    root, fs = host
    _create(fs, "/readme", b"r")
    _create(fs, "/Other", b"o")
    assert _errno(fs.rename, "/readme", "/OTHER", RENAME_NOREPLACE) == errno.EEXIST
    assert _errno(fs.rename, "/readme", "/README", RENAME_NOREPLACE) == errno.EEXIST
    assert _errno(fs.rename, "/readme", "/new", 2) == errno.EINVAL  # RENAME_EXCHANGE
    fs.rename("/README", "/New", RENAME_NOREPLACE)
    assert sorted(os.listdir(root)) == ["New", "Other"]


def test_rename_onto_an_existing_name_replaces_it_under_its_real_name(
    host: tuple[Path, CaseFold],
) -> None:
    root, fs = host
    _create(fs, "/a.txt", b"a")
    _create(fs, "/B.txt", b"b")
    fs.rename("/A.TXT", "/b.TXT")
    assert os.listdir(root) == ["B.txt"]
    assert _cat(fs, "/b.txt") == b"a"
    fs.mkdir("/Src", 0o755)
    fs.mkdir("/Dst", 0o755)
    fs.rename("/src", "/DST")  # an empty directory is replaced
    assert sorted(os.listdir(root)) == ["B.txt", "Dst"]


def test_twins_on_the_write_side(host: tuple[Path, CaseFold]) -> None:
    root, fs = host
    (root / "Makefile").write_bytes(b"M")
    (root / "makefile").write_bytes(b"m")
    fs.unlink("/MAKEFILE")  # the byte-wise smallest twin
    assert os.listdir(root) == ["makefile"]
    assert _cat(fs, "/MAKEFILE") == b"m"
    (root / "Other").write_bytes(b"O")
    (root / "other").write_bytes(b"o")
    fs.rename("/other", "/OTHER")  # a case change of the exact-case twin, not a replace
    assert sorted(os.listdir(root)) == ["OTHER", "Other", "makefile"]
    fs.rename("/makefile", "/Other")  # exact case: replaces that twin
    assert sorted(os.listdir(root)) == ["OTHER", "Other"]
    assert _cat(fs, "/Other") == b"m"


def test_cache_forgets_unlinked_and_renamed_entries(host: tuple[Path, CaseFold]) -> None:
    root, fs = host
    _create(fs, "/Foo")
    assert fs.getattr("/foo").is_reg
    fs.unlink("/FOO")
    assert _errno(fs.getattr, "/foo") == errno.ENOENT
    _create(fs, "/foo")  # not "Foo", as a stale map would say
    assert os.listdir(root) == ["foo"]
    fs.rename("/FOO", "/Bar")
    assert _errno(fs.getattr, "/foo") == errno.ENOENT
    assert fs.getattr("/bar").is_reg
    # A directory moved away: the maps of its subtree must not describe a new one.
    fs.mkdir("/Dir", 0o755)
    fs.mkdir("/dir/SUB", 0o755)
    _create(fs, "/dir/sub/File")
    assert fs.getattr("/DIR/sub/file").is_reg
    fs.rename("/dir", "/Moved")
    assert _cat(fs, "/moved/sub/FILE") == b""
    fs.mkdir("/dir", 0o755)
    fs.mkdir("/dir/sub", 0o755)
    _create(fs, "/DIR/SUB/file")
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "Bar",
        "Moved",
        "Moved/SUB",
        "Moved/SUB/File",
        "dir",
        "dir/sub",
        "dir/sub/file",
    ]
    fs.unlink("/dir/sub/FILE")
    fs.rmdir("/DIR/SUB")
    fs.mkdir("/dir/Sub", 0o755)
    assert os.listdir(root / "dir") == ["Sub"]


def test_over_a_union_of_a_host_dir_and_a_layer(image: Path, tmp_path: Path) -> None:
    fs = CaseFold(Union(HostDir(str(tmp_path)), [DwarfsImage.from_path(image)]))
    try:
        _create(fs, "/NewFile.md", b"new")
        assert fs.getattr("/newFILE.MD").size == 3
        assert "NewFile.md" in fs.readdir("/")
        _create(fs, "/readme.MD", b"changed")  # the lower README.md, copied up
        assert _cat(fs, "/README.md") == b"changed"
        assert sorted(os.listdir(tmp_path)) == ["NewFile.md", "README.md"]
        fs.unlink("/MAKEFILE")  # whites out the smallest twin, Makefile
        assert _cat(fs, "/MAKEFILE") == b"lower m"
        assert "makefile" in fs.readdir("/") and "Makefile" not in fs.readdir("/")
        fs.rename("/docs", "/DOCS")  # a case change of a lower directory
        names = fs.readdir("/")
        assert "DOCS" in names and "Docs" not in names
        assert _cat(fs, "/docs/deep/deeper/file.txt") == b"deep"
        fs.mkdir("/Docs/Deep/New", 0o755)
        assert (tmp_path / "DOCS" / "Deep" / "New").is_dir()
    finally:
        fs.close()


def test_names_added_behind_its_back(host: tuple[Path, CaseFold]) -> None:
    """The documented limit: exact case at once, any case after the directory is listed."""
    root, fs = host
    assert fs.readdir("/") == []
    (root / "Late").write_bytes(b"late")
    assert _cat(fs, "/Late") == b"late"
    assert _errno(fs.getattr, "/late") == errno.ENOENT
    assert fs.readdir("/") == ["Late"]
    assert _cat(fs, "/late") == b"late"


def test_pass_through_of_metadata_and_handles(host: tuple[Path, CaseFold]) -> None:
    root, fs = host
    _create(fs, "/File", b"0123456789")
    fs.chmod("/FILE", 0o600)
    assert stat.S_IMODE((root / "File").stat().st_mode) == 0o600
    fs.utimens("/file", 1_000_000_000, 2_000_000_000)
    assert (root / "File").stat().st_mtime_ns == 2_000_000_000
    fs.setxattr("/FILE", "user.fim", b"v", 0)
    assert fs.getxattr("/file", "user.fim") == b"v"
    assert "user.fim" in fs.listxattr("/fILE")
    fs.removexattr("/file", "user.fim")
    assert _errno(fs.getxattr, "/file", "user.fim") == errno.ENODATA
    assert fs.statfs() == fs.inner.statfs()
    # FUSE passes no path for calls on a handle whose file is gone.
    fh = fs.open("/file", os.O_RDWR)
    fs.unlink("/FILE")
    fs.write(None, b"ab", 0, fh)
    fs.truncate(None, 4, fh)
    fs.flush(None, fh)
    fs.fsync(None, False, fh)
    assert fs.read(None, 100, 0, fh) == b"ab23"
    fs.release(None, fh)


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Switch threads as often as possible, so that races have a chance to show."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


@pytest.mark.usefixtures("busy_switching")
def test_threads_never_make_twins(host: tuple[Path, CaseFold]) -> None:
    root, fs = host
    fs.mkdir("/d", 0o755)
    names = [f"name{i}" for i in range(8)]
    errors: list[BaseException] = []

    def variant(rng: random.Random, name: str) -> str:
        return "".join(c.upper() if rng.random() < 0.5 else c for c in name)

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(300):
                path = "/D/" + variant(rng, rng.choice(names))
                action = rng.random()
                try:
                    if action < 0.5:
                        _create(fs, path, b"x")
                    elif action < 0.75:
                        fs.unlink(path)
                    else:
                        fs.rename(path, "/d/" + variant(rng, rng.choice(names)))
                except FileNotFoundError:
                    pass
        except BaseException as e:
            errors.append(e)

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(600):
                try:
                    fs.getattr("/d/" + variant(rng, rng.choice(names)))
                except FileNotFoundError:
                    pass
                fs.readdir("/D")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    threads += [threading.Thread(target=reader, args=(100 + i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    on_disk = os.listdir(root / "d")
    assert len({n.lower() for n in on_disk}) == len(on_disk)
    assert sorted(fs.readdir("/d")) == sorted(on_disk)
    for name in on_disk:
        assert fs.getattr("/d/" + name.upper()).is_reg


@pytest.mark.usefixtures("busy_switching")
def test_simultaneous_creations_of_one_name_in_different_cases(
    host: tuple[Path, CaseFold],
) -> None:
    root, fs = host
    variants = ["name", "Name", "NAME", "nAme", "naMe", "namE", "NAme", "naME"]
    barrier = threading.Barrier(len(variants) + 1)  # and this thread, which checks
    errors: list[BaseException] = []

    def create(path: str) -> None:
        try:
            for _ in range(ROUNDS):
                barrier.wait()
                _create(fs, path, b"x")
                barrier.wait()
        except threading.BrokenBarrierError:
            pass
        except BaseException as e:
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=create, args=("/" + v,)) for v in variants]
    for t in threads:
        t.start()
    try:
        for _ in range(ROUNDS):
            barrier.wait()
            barrier.wait()
            assert len(os.listdir(root)) == 1
            fs.unlink("/NAME")
    finally:
        barrier.abort()
        for t in threads:
            t.join()
    assert errors == []


def test_a_listing_older_than_a_change_is_not_cached(tmp_path: Path) -> None:
    """A lookup that listed "/" before a concurrent create must not cache that listing."""
    listed, resume = threading.Event(), threading.Event()

    class Gated(HostDir):
        """Holds the first listing of "/" back until told to go on."""

        def readdir(self, path: str) -> list[str]:
            names = list(super().readdir(path))
            if not listed.is_set():
                listed.set()
                resume.wait(10)
            return names

    fs = CaseFold(Gated(str(tmp_path)))
    slow = threading.Thread(target=lambda: _errno(fs.getattr, "/x"))
    slow.start()
    assert listed.wait(10)
    _create(fs, "/X")  # while the slow lookup still holds an empty listing
    resume.set()
    slow.join()
    _create(fs, "/x", b"same file")
    assert os.listdir(tmp_path) == ["X"]
    fs.close()


def test_creates_in_a_listed_directory_do_not_relist_it(tmp_path: Path) -> None:
    """A create records its name in the cached map (it was dropped, so every create in a
    directory listed it again: quadratic); the names stay found in any case, listed
    once each, and a name folding like an existing one opens that one."""
    inner = HostDir(str(tmp_path))
    listings: list[str] = []
    real_readdir = inner.readdir

    def counting_readdir(path: str) -> object:
        listings.append(path)
        return real_readdir(path)

    inner.readdir = counting_readdir  # type: ignore[method-assign]
    fs = CaseFold(inner)
    try:
        fs.mkdir("/Dir", 0o755)
        assert fs.readdir("/dir") == []
        for i in range(200):
            _create(fs, f"/dir/File{i}")
        fs.mkdir("/DIR/Sub", 0o755)
        fs.symlink("file0", "/dir/Link")
        assert listings.count("/Dir") == 1
        assert fs.getattr("/DIR/FILE199").is_reg and fs.getattr("/dir/sub").is_dir
        names = fs.readdir("/dir")  # readdir itself always lists again
        assert sorted(names) == sorted([f"File{i}" for i in range(200)] + ["Sub", "Link"])
        _create(fs, "/dir/file7")  # the same file, whatever the case
        assert fs.readdir("/dir").count("File7") == 1 and "file7" not in fs.readdir("/dir")
    finally:
        fs.close()
