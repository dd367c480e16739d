"""The writer against the reader: generated trees of every inode type, a real tree,
and determinism. What the reader (and a FUSE mount of it) shows must equal the
source: types, modes, owners, times, sizes, bytes, link targets, devices, links."""

from __future__ import annotations

import contextlib
import glob
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fim.fimfs.dwarfs import DwarfsImage
from fim.fimfs.dwarfs.filedata import RECURRING, order
from fim.fimfs.dwarfs.options import WriteOptions
from fim.fimfs.dwarfs.scan import FileData
from fim.fimfs.dwarfs.writer import write_image
from tests.manifest import compare, manifest_of_dir, view_dir, view_fs

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="devices and owners need root")
needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                                reason="needs /dev/fuse and root")
SLOW = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- generated trees ------------------------------------------------------------------


@dataclass
class Entry:
    kind: str  # dir file sparse symlink hardlink fifo socket chr blk
    path: bytes
    data: bytes = b""
    writes: list[tuple[int, bytes]] = field(default_factory=list)  # sparse: at offsets
    size: int = 0  # sparse: final size
    target: bytes = b""  # symlink target, or the path a hard link points to
    perm: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    rdev: int = 0


def _clean(name: bytes) -> bytes:
    return name.replace(b"/", b"_").replace(b"\0", b"~")[:255]


NAMES = st.one_of(st.binary(min_size=1, max_size=30),
                  st.text(min_size=1, max_size=40).map(lambda s: s.encode("utf-8", "replace")),
                  st.sampled_from([b"a", b"b", b"A", b"z.txt", b"\xff\xfe", b"-", b" x ",
                                   b"\n", b"\xe2\x98\x80\xef\xb8\x8f"])
                  ).map(_clean).filter(lambda n: n not in (b"", b".", b".."))
CONTENT = st.one_of(
    st.binary(max_size=3000),
    st.tuples(st.binary(min_size=1, max_size=12), st.integers(1, 6000)).map(lambda t: t[0] * t[1]))
KINDS = ["dir", "dir", "file", "file", "file", "dup", "sparse", "symlink", "hardlink", "fifo",
         "socket", "chr", "blk", "empty"]


@st.composite
def trees(draw: st.DrawFn) -> list[Entry]:
    entries: list[Entry] = []
    dirs = [b""]
    taken: set[bytes] = set()
    for _ in range(draw(st.integers(0, 30))):
        parent = draw(st.sampled_from(dirs))
        name = draw(NAMES)
        path = parent + b"/" + name if parent else name
        if path in taken:
            continue
        taken.add(path)
        kind = draw(st.sampled_from(KINDS))
        files = [e for e in entries if e.kind in ("file", "empty")]
        e = Entry(kind, path, perm=draw(st.integers(0, 0o7777)), uid=draw(st.integers(0, 70000)),
                  gid=draw(st.integers(0, 70000)),
                  mtime_ns=draw(st.integers(0, 2**34)) * 10**9 + draw(st.integers(0, 10**9 - 1)))
        if kind == "dir":
            dirs.append(path)
        elif kind == "file":
            e.data = draw(CONTENT)
        elif kind == "dup":
            e.kind, e.data = "file", draw(st.sampled_from(files)).data if files else b"dup"
        elif kind == "sparse":
            e.size = draw(st.integers(0, 1 << 24))
            e.writes = draw(st.lists(st.tuples(st.integers(0, 1 << 24), CONTENT), max_size=3))
        elif kind == "symlink":
            e.target = draw(st.binary(min_size=1, max_size=200).map(
                lambda b: b.replace(b"\0", b"/")))
        elif kind == "hardlink":
            if not files:
                continue
            e.target = draw(st.sampled_from(files)).path
        elif kind in ("chr", "blk"):
            e.rdev = os.makedev(draw(st.integers(0, 4095)), draw(st.integers(0, 2**20 - 1)))
        entries.append(e)
    return entries


def build(root: Path, entries: list[Entry]) -> None:
    r = os.fsencode(root)
    for e in entries:
        p = os.path.join(r, e.path)
        if e.kind == "dir":
            os.mkdir(p)
        elif e.kind in ("file", "empty"):
            with open(p, "wb") as f:
                f.write(e.data)
        elif e.kind == "sparse":
            with open(p, "wb") as f:
                for off, data in e.writes:
                    f.seek(off)
                    f.write(data)
                f.truncate(max(e.size, f.tell()))
        elif e.kind == "symlink":
            os.symlink(e.target, p)
        elif e.kind == "hardlink":
            os.link(os.path.join(r, e.target), p)
        else:
            fmt = {"fifo": stat.S_IFIFO, "socket": stat.S_IFSOCK, "chr": stat.S_IFCHR,
                   "blk": stat.S_IFBLK}[e.kind]
            os.mknod(p, fmt | 0o600, e.rdev)
    for e in reversed(entries):  # children before their directory, whose mtime they change
        if e.kind == "hardlink":
            continue
        p = os.path.join(r, e.path)
        os.lchown(p, e.uid, e.gid)
        if e.kind != "symlink":
            os.chmod(p, e.perm)
        os.utime(p, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)



def lstat_all(root: Path) -> dict[str, os.stat_result]:
    out = {"/": os.lstat(root)}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            out["/" + os.fsdecode(os.path.relpath(full, os.fsencode(root)))] = os.lstat(full)
    return out


@contextlib.contextmanager
def image_of(entries: list[Entry], opts: WriteOptions) -> Iterator[tuple[Path, Path]]:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "src")
        src.mkdir()
        build(src, entries)
        out = Path(tmp, "out.dwarfs")
        write_image(src, out, opts)
        yield src, out


def check_image(src: Path, out: Path, before: dict[str, os.stat_result],
                opts: WriteOptions) -> None:
    with DwarfsImage.from_path(out) as img:
        assert img.check(full=True) == []
        assert compare(manifest_of_dir(src), view_fs(img)) == []
        for path, st_ in before.items():
            a = img.getattr(path)
            if opts.subsecond_ns == 1:
                assert a.mtime_ns == st_.st_mtime_ns, path
            if opts.keep_all_times:
                if not stat.S_ISDIR(st_.st_mode):  # listing a directory may touch its atime
                    assert a.atime_ns // 10**9 == st_.st_atime_ns // 10**9, path
                assert a.ctime_ns // 10**9 == st_.st_ctime_ns // 10**9, path
            if stat.S_ISREG(st_.st_mode):
                assert a.blocks * 512 <= max(st_.st_blocks * 512, st_.st_size + 511), path


@needs_root
@SLOW
@given(entries=trees(), level=st.sampled_from([0, 1, 2, 4, 7, 8]), bits=st.integers(10, 16),
       keep_all=st.booleans(), subsec=st.sampled_from([None, 1]),
       order=st.sampled_from(["path", "similarity"]))
def test_generated_trees_round_trip(entries: list[Entry], level: int, bits: int, keep_all: bool,
                                    subsec: int | None, order: str) -> None:
    opts = WriteOptions(level=level, block_size_bits=bits, keep_all_times=keep_all,
                        subsecond_ns=subsec, order=order, jobs=2)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "src")
        src.mkdir()
        build(src, entries)
        before = lstat_all(src)
        out = Path(tmp, "out.dwarfs")
        write_image(src, out, opts)
        check_image(src, out, before, opts)


# -- FUSE ---------------------------------------------------------------------------------

def _fuse_round_trip(entries: list[Entry], opts: WriteOptions) -> None:
    from fim.fimfs import fuse

    with image_of(entries, opts) as (src, out), tempfile.TemporaryDirectory() as mnt:
        fuse.mount(lambda: DwarfsImage.from_path(out), mnt, foreground=False,
                   options={"use_ino": True})
        try:
            assert compare(manifest_of_dir(src), view_dir(Path(mnt))) == []
        finally:
            fuse.umount(mnt)


ALL_KINDS = [
    Entry("dir", b"d", perm=0o1777, uid=7, gid=8, mtime_ns=10**18),
    Entry("dir", b"d/empty", perm=0o700),
    Entry("file", b"d/f", data=b"hello" * 1000, perm=0o4755, uid=1000, gid=100),
    Entry("file", b"d/same", data=b"hello" * 1000, perm=0o2644),
    Entry("hardlink", b"d/hard", target=b"d/f"),
    Entry("empty", b"e1"), Entry("empty", b"e2"),
    Entry("sparse", b"sparse", size=50 << 20, writes=[(1 << 20, b"x" * 5000), (9 << 20, b"y")]),
    Entry("symlink", b"l", target=b"d/f"), Entry("symlink", b"dangling", target=b"/no/where"),
    Entry("fifo", b"fifo", perm=0o640), Entry("socket", b"sock"),
    Entry("chr", b"null", rdev=os.makedev(1, 3), perm=0o666),
    Entry("blk", b"loop9", rdev=os.makedev(7, 9)),
    Entry("file", b"\xff\xfe odd \n name", data=os.urandom(70000)),
]


@needs_fuse
def test_all_kinds_through_fuse() -> None:
    _fuse_round_trip(ALL_KINDS, WriteOptions(level=7, block_size_bits=16))


@needs_fuse
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=trees())
def test_generated_trees_through_fuse(entries: list[Entry]) -> None:
    _fuse_round_trip(entries, WriteOptions(level=1, block_size_bits=12))


# -- a real tree, determinism ---------------------------------------------------------------

def _real_tree() -> Path | None:
    found = sorted(glob.glob("/usr/lib/python3.[0-9]*"))
    return Path(found[-1]) if found else None


@pytest.mark.slow
@pytest.mark.skipif(_real_tree() is None, reason="no /usr/lib/python3.X on this machine")
def test_python_stdlib_round_trip(tmp_path: Path) -> None:
    src = _real_tree()
    out = tmp_path / "stdlib.dwarfs"
    stats = write_image(src, out, WriteOptions(level=1, block_size_bits=22))
    assert stats.entries > 1000
    with DwarfsImage.from_path(out) as img:
        assert img.check(full=True) == []
        assert compare(manifest_of_dir(src), view_fs(img)) == []


@needs_root
def test_same_tree_same_bytes(tmp_path: Path) -> None:
    """Two copies made in opposite order (so directories list differently), written
    with different numbers of compression threads: every image is byte-identical."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    build(a, ALL_KINDS)
    dirs = [e for e in ALL_KINDS if e.kind == "dir"]
    build(b, dirs + list(reversed([e for e in ALL_KINDS if e.kind != "dir" and
                                   e.kind != "hardlink"])) +
          [e for e in ALL_KINDS if e.kind == "hardlink"])
    images = []
    for src, jobs in ((a, 1), (b, 2), (a, 3)):
        out = tmp_path / f"{len(images)}.dwarfs"
        write_image(src, out, WriteOptions(level=4, block_size_bits=14, jobs=jobs))
        images.append(out.read_bytes())
    assert images[0] == images[1] == images[2]


def test_similarity_order_groups_recurring_names() -> None:
    """By extension; a name found in RECURRING files or more (a catalogue in every
    language) groups them by name, across directories; other files keep path order."""
    langs = [b"de", b"fr", b"ja", b"pt"][:RECURRING]
    paths = [b"/src/b.py", b"/src/a.txt", b"/lib/z.py"]
    for lang in reversed(langs):
        paths += [b"/locale/" + lang + b"/bash.mo", b"/locale/" + lang + b"/" + lang + b".mo"]
    files = [FileData(p, 1, 0, i, 0, False) for i, p in enumerate(paths)]
    got = [f.path for f in order(files, "similarity")]
    assert got == ([b"/locale/" + lang + b"/" + lang + b".mo" for lang in langs]  # by path
                   + [b"/locale/" + lang + b"/bash.mo" for lang in langs]  # bash.mo together
                   + [b"/lib/z.py", b"/src/b.py", b"/src/a.txt"])
    assert order(files, "path") == files
