"""fim.fimfs.union.Union as a plain object: real host upper directories, real DwarFS lowers.

Covers the overlayfs rules (topmost wins, merge, whiteouts and opaque directories in
every layer and in both on-disk forms), copy-up, rename of files and directories across
layers, links, inode numbers, read-only unions, concurrency, and one upper directory
read by kernel overlayfs (and one written by it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fim.fimfs import copyup
from fim.fimfs import whiteout as wh
from fim.fimfs.dwarfs import DwarfsImage
from fim.fimfs.dwarfs.writer import write_image
from fim.fimfs.hostdir import HostDir
from fim.fimfs.union import Union
from fim.fimfs.vfs import RENAME_NOREPLACE, Attr, Filesystem
from tests.manifest import view_dir, view_fs

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="devices, owners and trusted.* need root")
T1 = 1_500_000_000 * 10**9
T2 = 1_600_000_000 * 10**9
DIR = "<dir>"
WHITEOUT = "<whiteout>"
BIG = bytes((i * 7 + i // 4096) & 0xFF for i in range(3 * copyup.COPY_CHUNK + 12345))


@dataclass(frozen=True)
class Sym:
    target: str


Spec = dict[str, object]


def build(root: Path, spec: Spec) -> Path:
    """A host tree: bytes are files, DIR a directory, Sym a symlink, WHITEOUT a char 0:0."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, what in spec.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if what == DIR:
            p.mkdir(exist_ok=True)
        elif what == WHITEOUT:
            os.mknod(p, stat.S_IFCHR, 0)
        elif isinstance(what, Sym):
            os.symlink(what.target, p)
        else:
            assert isinstance(what, bytes)
            p.write_bytes(what)
    return root


class Stack:
    """Builds unions over layers made in a temporary directory, and closes them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.upper = tmp / "upper"
        self.upper.mkdir()
        self.trees: list[Path] = []
        self.images: list[Path] = []
        self.unions: list[Union] = []

    def lower(self, spec: Spec, prepare: Callable[[Path], None] | None = None) -> None:
        """Add a lower below the previous ones (the first added is the topmost)."""
        n = len(self.trees)
        tree = build(self.tmp / f"tree{n}", spec)
        if prepare is not None:
            prepare(tree)
        image = self.tmp / f"layer{n}.dwarfs"
        write_image(tree, image)
        self.trees.append(tree)
        self.images.append(image)

    def union(self, writable: bool = True, upper: Filesystem | None = None) -> Union:
        lowers = [DwarfsImage.from_path(p) for p in self.images]
        u = Union((upper or HostDir(self.upper)) if writable else None, lowers)
        self.unions.append(u)
        return u

    def close(self) -> None:
        for u in self.unions:
            u.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    yield s
    s.close()


def check_errno(code: int, func: Callable[..., object], *args: object) -> None:
    with pytest.raises(OSError) as info:
        func(*args)
    assert info.value.errno == code, info.value


def read_all(fs: Filesystem, path: str) -> bytes:
    fh = fs.open(path, os.O_RDONLY)
    try:
        out, off = [], 0
        while chunk := fs.read(path, 1 << 20, off, fh):
            out.append(chunk)
            off += len(chunk)
        return b"".join(out)
    finally:
        fs.release(path, fh)


def write_file(fs: Filesystem, path: str, data: bytes, flags: int = os.O_WRONLY) -> None:
    fh = fs.open(path, flags)
    try:
        fs.write(path, data, 0, fh)
    finally:
        fs.release(path, fh)


def new_file(fs: Filesystem, path: str, data: bytes = b"", mode: int = 0o644) -> None:
    fh = fs.create(path, mode, os.O_WRONLY)
    try:
        if data:
            fs.write(path, data, 0, fh)
    finally:
        fs.release(path, fh)


def tree_of(fs: Filesystem, path: str = "/") -> dict[str, bytes | str]:
    """Every path below ``path``: file content, symlink target or "dir"."""
    out: dict[str, bytes | str] = {}
    stack = [path]
    while stack:
        cur = stack.pop()
        for name in fs.readdir(cur):
            p = cur.rstrip("/") + "/" + name
            a = fs.getattr(p)
            if a.is_dir:
                out[p] = "dir"
                stack.append(p)
            elif a.is_lnk:
                out[p] = "-> " + fs.readlink(p)
            elif a.is_reg:
                out[p] = read_all(fs, p)
            else:
                out[p] = f"special {stat.S_IFMT(a.mode):o}"
    return out


def upper_kind(stack: Stack, rel: str) -> str:
    """What the upper directory holds at ``rel``: whiteout, dir, file, ... or absent."""
    try:
        st = os.lstat(stack.upper / rel)
    except FileNotFoundError:
        return "absent"
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return "whiteout"
    return "dir" if stat.S_ISDIR(st.st_mode) else "other"


def is_opaque_on_disk(path: Path) -> bool:
    try:
        return os.getxattr(path, wh.OPAQUE_XATTR) == b"y"
    except OSError:
        return (path / wh.OPAQUE_MARKER).exists()


# -- reading: precedence, merge, whiteouts, opaque directories ---------------------------


def test_topmost_layer_wins_and_directories_merge(stack: Stack) -> None:
    stack.lower({"f": b"top", "d/a": b"A", "x": b"file over dir"})
    stack.lower({"f": b"bottom", "d/b": b"B", "x/child": b"hidden", "only": b"1"})
    build(stack.upper, {"d/c": b"C", "up": b"u"})
    u = stack.union()
    assert read_all(u, "/f") == b"top"
    assert sorted(u.readdir("/")) == ["d", "f", "only", "up", "x"]
    assert sorted(u.readdir("/d")) == ["a", "b", "c"]
    assert [read_all(u, f"/d/{n}") for n in "abc"] == [b"A", b"B", b"C"]
    assert u.getattr("/x").is_reg
    check_errno(errno.ENOTDIR, u.getattr, "/x/child")
    check_errno(errno.ENOTDIR, u.readdir, "/x")
    check_errno(errno.ENOENT, u.getattr, "/nothing")
    check_errno(errno.ENOENT, u.getattr, "/nothing/below")
    assert u.getattr("/d").nlink == 1  # merged, as overlayfs
    assert u.getattr("/d/a").nlink == 1


def test_whiteouts_and_opaque_dirs_in_a_dwarfs_lower(stack: Stack) -> None:
    stack.lower({"gone": WHITEOUT, ".wh.gone2": b"", "d/" + wh.OPAQUE_MARKER: b"", "d/a": b"A",
                 "e/x": b"x"})
    stack.lower({"gone": b"1", "gone2": DIR, "gone2/y": b"y", "d/b": b"B", "e/y": b"y",
                 "kept": b"k"})
    image = DwarfsImage.from_path(stack.images[0])  # the writer keeps both forms
    assert stat.S_ISCHR(image.getattr("/gone").mode) and image.getattr("/gone").rdev == 0
    assert wh.OPAQUE_MARKER in image.readdir("/d")
    image.close()
    u = stack.union(writable=False)
    assert sorted(u.readdir("/")) == ["d", "e", "kept"]
    assert u.readdir("/d") == ["a"]
    assert sorted(u.readdir("/e")) == ["x", "y"]
    for hidden in ("/gone", "/gone2", "/gone2/y", "/.wh.gone2", "/d/b", "/d/" + wh.OPAQUE_MARKER):
        with pytest.raises(OSError):
            u.getattr(hidden)


def test_readdir_attrs_is_readdir_then_getattr(stack: Stack) -> None:
    """Directories that one lower alone provides are listed from that layer at once
    (whiteouts and .wh. names left out, resolutions cached): the same as name by name."""
    stack.lower({"d/" + wh.OPAQUE_MARKER: b"", "d/a": b"A", "d/gone": WHITEOUT,
                 "d/.wh.gone2": b"", "d/sub/s": b"s", "m/top": b"t", "solo/x": b"x",
                 "solo/deep/y": b"yy", "solo/link": Sym("x")})
    stack.lower({"d/b": b"B", "d/gone": b"g", "m/bottom": b"b", "m/deep/z": b"z", "low/q": b"q"})
    build(stack.upper, {"m/up": b"u", "updir/f": b"f"})
    dirs = ["/", "/d", "/d/sub", "/m", "/m/deep", "/solo", "/solo/deep", "/low", "/updir"]
    fresh, named = stack.union(), stack.union()
    for d in dirs:
        listed = fresh.readdir_attrs(d)
        assert listed == [(n, named.getattr(f"{d.rstrip('/')}/{n}")) for n in named.readdir(d)]
        assert listed == [(n, fresh.getattr(f"{d.rstrip('/')}/{n}")) for n in fresh.readdir(d)]
    assert [n for n, _ in fresh.readdir_attrs("/d")] == ["a", "sub"]
    assert fresh.getattr("/d").nlink == named.getattr("/d").nlink
    check_errno(errno.ENOENT, fresh.getattr, "/d/gone")
    check_errno(errno.ENOTDIR, fresh.readdir_attrs, "/solo/x")


@needs_root
def test_whiteouts_and_opaque_dirs_in_the_upper(stack: Stack) -> None:
    stack.lower({"a": b"1", "b": b"2", "x/1": b"", "y/1": b"", "z/1": b"", "w/1": b""})
    build(stack.upper, {"a": WHITEOUT, ".wh.b": b"", "x/mine": b"", "y": DIR, "z": DIR,
                        "w/" + wh.OPAQUE_MARKER: b""})
    os.setxattr(stack.upper / "x", "trusted.overlay.opaque", b"y")
    os.setxattr(stack.upper / "y", "user.overlay.opaque", b"y")
    os.setxattr(stack.upper / "z", "trusted.overlay.opaque", b"n")  # not opaque
    u = stack.union()
    assert sorted(u.readdir("/")) == ["w", "x", "y", "z"]
    assert u.readdir("/x") == ["mine"]
    assert u.readdir("/y") == [] and u.readdir("/w") == []
    assert u.readdir("/z") == ["1"]
    assert "trusted.overlay.opaque" not in u.listxattr("/x")
    check_errno(errno.EOPNOTSUPP, u.getxattr, "/x", "trusted.overlay.opaque")
    check_errno(errno.EOPNOTSUPP, u.setxattr, "/x", "trusted.overlay.opaque", b"n", 0)
    check_errno(errno.EOPNOTSUPP, u.removexattr, "/x", "user.overlay.opaque")


def test_root_and_statfs(stack: Stack) -> None:
    stack.lower({"f": b""})
    u = stack.union()
    assert u.getattr("/").ino == 0 and u.getattr("/").is_dir
    assert u.statfs().blocks == os.statvfs(stack.upper).f_blocks
    ro = stack.union(writable=False)
    assert ro.getattr("/").ino == 0
    assert ro.statfs() == DwarfsImage.from_path(stack.images[0]).statfs()
    with pytest.raises(ValueError):
        Union(None, [])


# -- copy-up ----------------------------------------------------------------------------


def _lower_attrs(tree: Path) -> None:
    os.chmod(tree / "d", 0o750)
    os.chmod(tree / "d/f", 0o4755)
    if os.geteuid() == 0:
        for p in (tree / "d", tree / "d/f", tree / "d/big"):
            os.chown(p, 1234, 5678)
        os.lchown(tree / "d/l", 42, 43)
    os.utime(tree / "d/l", ns=(T1, T1), follow_symlinks=False)
    for p in (tree / "d/f", tree / "d/big", tree / "d/sparse", tree / "d"):
        os.utime(p, ns=(T1, T2))


def test_copy_up_keeps_content_mode_owner_times(stack: Stack) -> None:
    with_hole = b"head" + bytes(5 * copyup.COPY_CHUNK) + b"tail"
    stack.lower({"d/f": b"content", "d/big": BIG, "d/sparse": with_hole, "d/l": Sym("f")},
                _lower_attrs)
    u = stack.union()
    before = {p: u.getattr(p) for p in ("/d", "/d/f", "/d/big", "/d/sparse", "/d/l")}
    u.chmod("/d/f", 0o700)
    write_file(u, "/d/big", b"X")
    u.utimens("/d/sparse", T1, T1)
    u.chown("/d/l", before["/d/l"].uid, before["/d/l"].gid)
    for p, a in before.items():
        now = u.getattr(p)
        assert (now.uid, now.gid, now.ino) == (a.uid, a.gid, a.ino), p
        if p not in ("/d/f", "/d/big", "/d/sparse"):
            assert (now.mode, now.mtime_ns) == (a.mode, a.mtime_ns), p
    assert stat.S_IMODE(u.getattr("/d/f").mode) == 0o700
    assert u.getattr("/d/sparse").mtime_ns == T1
    assert stat.S_IMODE(os.stat(stack.upper / "d").st_mode) == 0o750  # parent: its own attrs
    assert os.stat(stack.upper / "d").st_mtime_ns == T2  # not touched by the copy-ups
    assert read_all(u, "/d/f") == b"content"
    assert read_all(u, "/d/big") == b"X" + BIG[1:]
    assert read_all(u, "/d/sparse") == with_hole
    assert os.stat(stack.upper / "d/sparse").st_blocks * 512 < 2 * copyup.COPY_CHUNK
    assert u.readlink("/d/l") == "f" and os.readlink(stack.upper / "d/l") == "f"
    if os.geteuid() == 0:
        assert os.stat(stack.upper / "d/f").st_uid == 1234
    leftovers = [n for _, _, names in os.walk(stack.upper) for n in names
                 if n.startswith(wh.PREFIX)]
    assert leftovers == []


def test_copy_up_keeps_xattrs(tmp_path: Path) -> None:
    low = build(tmp_path / "low", {"d/f": b"data"})
    os.setxattr(low / "d/f", "user.a", b"1")
    os.setxattr(low / "d", "user.b", b"2")
    build(tmp_path / "up", {})
    u = Union(HostDir(tmp_path / "up"), [HostDir(low)])
    u.chmod("/d/f", 0o600)
    assert u.getxattr("/d/f", "user.a") == b"1"
    assert os.getxattr(tmp_path / "up/d/f", "user.a") == b"1"
    assert os.getxattr(tmp_path / "up/d", "user.b") == b"2"
    u.setxattr("/d", "user.c", b"3", 0)
    assert sorted(u.listxattr("/d")) == ["user.b", "user.c"]
    u.removexattr("/d/f", "user.a")
    check_errno(errno.ENODATA, u.getxattr, "/d/f", "user.a")
    assert os.getxattr(low / "d/f", "user.a") == b"1"


class UnreadableData(Filesystem):
    """A lower layer whose file contents cannot be read (EIO)."""

    def __init__(self, inner: Filesystem) -> None:
        self.inner = inner

    def getattr(self, path: str) -> Attr:
        return self.inner.getattr(path)

    def readdir(self, path: str) -> list[str]:
        return list(self.inner.readdir(path))

    def open(self, path: str, flags: int) -> int:
        return self.inner.open(path, flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO), path)

    def release(self, path: str, fh: int) -> None:
        self.inner.release(path, fh)

    def close(self) -> None:
        self.inner.close()


def test_failed_copy_up_leaves_nothing(stack: Stack) -> None:
    stack.lower({"d/f": b"data"})
    u = Union(HostDir(stack.upper), [UnreadableData(DwarfsImage.from_path(stack.images[0]))])
    check_errno(errno.EIO, u.open, "/d/f", os.O_WRONLY)
    assert sorted(os.listdir(stack.upper / "d")) == []
    assert u.getattr("/d/f").is_reg
    u.close()


def test_open_for_write_truncate_append_fsync(stack: Stack) -> None:
    stack.lower({"f": b"0123456789", "g": b"abcdef", "h": b"xyz", "t": b"long content"})
    u = stack.union()
    reader = u.open("/f", os.O_RDONLY)  # opened on the lower before the copy-up
    fh = u.open("/f", os.O_RDWR)
    u.write("/f", b"AB", 2, fh)
    u.fsync("/f", False, fh)
    u.flush("/f", fh)
    assert u.read("/f", 100, 0, fh) == b"01AB456789"
    u.truncate("/f", 4, fh)
    assert read_all(u, "/f") == b"01AB"
    u.release("/f", fh)
    assert u.read("/f", 100, 0, reader) == b"0123456789"  # documented: still the lower
    u.release("/f", reader)
    fh = u.open("/g", os.O_WRONLY | os.O_APPEND)
    u.write("/g", b"!", 0, fh)
    u.release("/g", fh)
    assert read_all(u, "/g") == b"abcdef!"
    fh = u.open("/h", os.O_WRONLY | os.O_TRUNC)
    u.release("/h", fh)
    assert read_all(u, "/h") == b"" and u.getattr("/h").size == 0
    u.truncate("/t", 4)
    assert read_all(u, "/t") == b"long"
    u.truncate("/t", 6)
    assert read_all(u, "/t") == b"long\0\0"
    check_errno(errno.EISDIR, u.open, "/", os.O_WRONLY)


def test_write_to_a_lower_handle_is_refused(stack: Stack) -> None:
    stack.lower({"f": b"x"})
    u = stack.union()
    fh = u.open("/f", os.O_RDONLY)
    check_errno(errno.EBADF, u.write, "/f", b"y", 0, fh)
    u.release("/f", fh)


# -- deleting: whiteouts, rmdir, opaque mkdir ---------------------------------------------


def test_unlink_and_rmdir_write_whiteouts_that_survive_a_remount(stack: Stack) -> None:
    stack.lower({"f": b"1", "d/x": b"", "e": DIR, "both": b"lower"})
    u = stack.union()
    new_file(u, "/mine", b"m")
    write_file(u, "/both", b"upper")
    u.unlink("/f")
    u.unlink("/mine")
    u.unlink("/both")
    check_errno(errno.ENOTEMPTY, u.rmdir, "/d")
    u.unlink("/d/x")
    assert upper_kind(stack, "d/x") == "whiteout"
    u.rmdir("/d")  # its upper dir held only a whiteout
    u.rmdir("/e")
    assert u.readdir("/") == []
    assert {n: upper_kind(stack, n) for n in ("f", "mine", "both", "d", "e")} == {
        "f": "whiteout", "mine": "absent", "both": "whiteout", "d": "whiteout", "e": "whiteout"}
    assert stack.union().readdir("/") == []
    check_errno(errno.ENOENT, stack.union().getattr, "/d/x")


def test_delete_errors(stack: Stack) -> None:
    stack.lower({"d/x": b"", "f": b""})
    u = stack.union()
    check_errno(errno.EISDIR, u.unlink, "/d")
    check_errno(errno.ENOTDIR, u.rmdir, "/f")
    check_errno(errno.ENOENT, u.unlink, "/nothing")
    check_errno(errno.EBUSY, u.rmdir, "/")
    check_errno(errno.ENOTDIR, u.unlink, "/f/x")


@needs_root
def test_mkdir_over_a_whiteout_is_opaque(stack: Stack) -> None:
    stack.lower({"d/old": b"", "f": b"lower"})
    u = stack.union()
    u.unlink("/d/old")
    u.rmdir("/d")
    u.mkdir("/d", 0o755)
    assert u.readdir("/d") == []
    assert upper_kind(stack, "d") == "dir"
    assert os.getxattr(stack.upper / "d", wh.OPAQUE_XATTR) == b"y"
    u.unlink("/f")
    new_file(u, "/f", b"new")  # create over a whiteout replaces it
    assert read_all(u, "/f") == b"new"
    assert stat.S_ISREG(os.lstat(stack.upper / "f").st_mode)
    assert stack.union().readdir("/d") == []


class NoMknodNoXattr(HostDir):
    """An upper where mknod of devices and trusted.* xattrs are refused (as unprivileged)."""

    def mknod(self, path: str, mode: int, rdev: int) -> None:
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM), path)
        super().mknod(path, mode, rdev)

    def setxattr(self, path: str, name: str, value: bytes, flags: int) -> None:
        if name.startswith("trusted."):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM), path)
        super().setxattr(path, name, value, flags)


def test_fallback_forms_when_mknod_and_trusted_xattrs_are_refused(stack: Stack) -> None:
    stack.lower({"f": b"1", "d/x": b"", "e/y": b"", "g": b"2"})
    u = stack.union(upper=NoMknodNoXattr(stack.upper))
    u.unlink("/f")
    write_file(u, "/g", b"3")
    u.unlink("/g")  # an upper file with a lower one below
    u.unlink("/d/x")
    u.rmdir("/d")
    u.mkdir("/d", 0o755)
    u.rename("/e", "/f")  # a directory onto a name whited out by a .wh. file
    names = sorted(os.listdir(stack.upper))
    assert names == [".wh.e", ".wh.g", "d", "f"]
    assert (stack.upper / "d" / wh.OPAQUE_MARKER).exists()
    for fresh in (u, stack.union()):
        assert sorted(fresh.readdir("/")) == ["d", "f"]
        assert fresh.readdir("/d") == [] and fresh.readdir("/f") == ["y"]
    new_file(u, "/g", b"back")
    assert not (stack.upper / ".wh.g").exists() and read_all(u, "/g") == b"back"


def test_reserved_names(stack: Stack) -> None:
    stack.lower({"f": b""})
    u = stack.union()
    for make in (lambda p: new_file(u, p), lambda p: u.mkdir(p, 0o755),
                 lambda p: u.symlink("x", p), lambda p: u.rename("/f", p)):
        check_errno(errno.EPERM, make, "/.wh.x")
    check_errno(errno.EPERM, u.mknod, "/c", stat.S_IFCHR | 0o600, 0)
    check_errno(errno.ENOENT, u.getattr, "/.wh.x")


# -- creating ------------------------------------------------------------------------------


def test_create_in_lower_dirs_and_special_files(stack: Stack) -> None:
    stack.lower({"a/b/c": b""})
    u = stack.union()
    new_file(u, "/a/b/new", b"n", 0o640)
    assert upper_kind(stack, "a/b/new") == "other"
    assert stat.S_IMODE(u.getattr("/a/b/new").mode) == 0o640
    assert sorted(u.readdir("/a/b")) == ["c", "new"]
    u.mkdir("/a/sub", 0o700)
    u.symlink("../x", "/a/sym")
    u.mknod("/a/fifo", stat.S_IFIFO | 0o600, 0)
    assert u.readlink("/a/sym") == "../x"
    assert stat.S_ISFIFO(u.getattr("/a/fifo").mode)
    assert sorted(u.readdir("/a")) == ["b", "fifo", "sub", "sym"]
    check_errno(errno.EEXIST, u.mkdir, "/a/b", 0o755)
    check_errno(errno.EEXIST, u.create, "/a/b/c", 0o644, os.O_WRONLY | os.O_EXCL)
    fh = u.create("/a/b/c", 0o644, os.O_WRONLY)  # no O_EXCL: opens the existing file
    u.write("/a/b/c", b"w", 0, fh)
    u.release("/a/b/c", fh)
    assert read_all(u, "/a/b/c") == b"w"
    check_errno(errno.ENOENT, u.mkdir, "/none/x", 0o755)
    if os.geteuid() == 0:
        u.mknod("/a/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        assert u.getattr("/a/null").rdev == os.makedev(1, 3)


def test_hard_links(stack: Stack) -> None:
    stack.lower({"f": b"data", "g": b"x"}, lambda t: os.link(t / "g", t / "g2"))
    u = stack.union()
    assert u.getattr("/g").ino == u.getattr("/g2").ino  # a lower hard link
    ino = u.getattr("/f").ino
    u.link("/f", "/f2")
    a, b = u.getattr("/f"), u.getattr("/f2")
    assert a.ino == b.ino == ino and a.nlink == b.nlink == 2
    write_file(u, "/f2", b"DATA")
    assert read_all(u, "/f") == b"DATA"
    u.unlink("/f")
    assert u.getattr("/f2").ino == ino and u.getattr("/f2").nlink == 1
    check_errno(errno.EPERM, u.link, "/", "/root2")
    check_errno(errno.EEXIST, u.link, "/f2", "/g")


# -- rename ------------------------------------------------------------------------------------


def test_rename_files_across_layers(stack: Stack) -> None:
    stack.lower({"a": b"A", "b": b"B", "d/c": b"C"})
    stack.lower({"e/x": b"E"})
    u = stack.union()
    ino_a = u.getattr("/a").ino
    u.rename("/a", "/d/a2")
    assert read_all(u, "/d/a2") == b"A" and u.getattr("/d/a2").ino == ino_a
    check_errno(errno.ENOENT, u.getattr, "/a")
    assert upper_kind(stack, "a") == "whiteout"
    u.rename("/d/c", "/b")  # over a lower file
    assert read_all(u, "/b") == b"C"
    u.rename("/e/x", "/e/y")  # within a dir of the bottom layer
    assert u.readdir("/e") == ["y"]
    new_file(u, "/n", b"N")
    u.rename("/n", "/m")
    assert upper_kind(stack, "n") == "absent"  # nothing below: no whiteout
    u.link("/m", "/m2")
    u.rename("/m", "/m2")  # two links of one file: nothing happens
    assert sorted(u.readdir("/")) == ["b", "d", "e", "m", "m2"]
    check_errno(errno.ENOENT, u.rename, "/missing", "/x")
    check_errno(errno.EBUSY, u.rename, "/", "/x")


def test_rename_noreplace_is_checked_under_the_union_lock(stack: Stack) -> None:
    stack.lower({"a": b"A", "low": b"L", "d": DIR})
    u = stack.union()
    new_file(u, "/up", b"U")
    for target in ("/low", "/up", "/d", "/a"):  # lower, upper, directory, itself
        check_errno(errno.EEXIST, u.rename, "/a", target, RENAME_NOREPLACE)
    check_errno(errno.EINVAL, u.rename, "/a", "/b", 2)  # RENAME_EXCHANGE
    u.unlink("/low")  # a whiteout is no entry
    u.rename("/a", "/low", RENAME_NOREPLACE)
    assert read_all(u, "/low") == b"A"
    check_errno(errno.ENOENT, u.getattr, "/a")
    # the check and the rename are one step: of racing renames onto one name, one wins
    for i in range(8):
        new_file(u, f"/r{i}", str(i).encode())
    results: list[int] = []

    def race(i: int) -> None:
        try:
            u.rename(f"/r{i}", "/won", RENAME_NOREPLACE)
            results.append(i)
        except FileExistsError:
            pass

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1 and read_all(u, "/won") == str(results[0]).encode()


def test_rename_directories_across_layers(stack: Stack) -> None:
    stack.lower({"src/f": b"top", "src/sub/g": b"g", "dst/old": b"o", "empty": DIR})
    stack.lower({"src/h": b"bottom", "src/sub/i": b"i", "dst/lower": b"l"})
    u = stack.union()
    write_file(u, "/src/f", b"changed")
    u.unlink("/src/sub/g")
    inos = {p: u.getattr(p).ino for p in ("/src", "/src/f", "/src/sub", "/src/sub/i", "/src/h")}
    before = tree_of(u, "/src")
    check_errno(errno.ENOTEMPTY, u.rename, "/src", "/dst")
    check_errno(errno.EINVAL, u.rename, "/src", "/src/sub/x")
    check_errno(errno.ENOTDIR, u.rename, "/src", "/dst/old")
    check_errno(errno.EISDIR, u.rename, "/dst/old", "/src")
    u.rename("/src", "/moved")
    assert tree_of(u, "/moved") == {p.replace("/src", "/moved", 1): v for p, v in before.items()}
    assert {p: u.getattr(p.replace("/src", "/moved", 1)).ino for p in inos} == inos
    check_errno(errno.ENOENT, u.getattr, "/src")
    assert upper_kind(stack, "src") == "whiteout"
    u.rename("/moved", "/empty")  # over an empty lower directory: now opaque
    assert sorted(u.readdir("/empty")) == ["f", "h", "sub"]
    assert is_opaque_on_disk(stack.upper / "empty")
    u.rename("/empty", "/dst/new")  # a directory whose lower name has entries
    assert sorted(u.readdir("/dst")) == ["lower", "new", "old"]
    moved = [n for _, dirs, files in os.walk(stack.upper / "dst/new") for n in dirs + files]
    assert sorted(moved) == ["f", "h", "i", "sub"]  # the whiteout of sub/g is dropped
    fresh = stack.union()
    assert tree_of(fresh) == tree_of(u)
    assert sorted(fresh.readdir("/")) == ["dst"]


def test_rename_directory_onto_a_name_the_lowers_have(stack: Stack) -> None:
    stack.lower({"a/x": b"1", "b/y": b"2"})
    u = stack.union()
    u.unlink("/b/y")
    u.rename("/a", "/b")  # b is empty in the merged view, but its lower has y
    assert u.readdir("/b") == ["x"]
    assert stack.union().readdir("/b") == ["x"]
    assert u.readdir("/") == ["b"]


# -- inode numbers -----------------------------------------------------------------------------


def test_inode_numbers_unique_and_stable(stack: Stack) -> None:
    stack.lower({"a": b"", "d/b": b""})
    stack.lower({"c": b"", "d/e": b""})  # same DwarFS inode numbers as the first layer
    build(stack.upper, {"u": b""})
    u = stack.union()
    paths = ["/", "/a", "/c", "/d", "/d/b", "/d/e", "/u"]
    inos = {p: u.getattr(p).ino for p in paths}
    assert len(set(inos.values())) == len(paths)
    assert inos["/"] == 0
    assert {p: u.getattr(p).ino for p in paths} == inos
    u.chmod("/d/e", 0o600)
    u.chmod("/d", 0o700)
    u.rename("/c", "/c2")
    u.rename("/u", "/d/u")
    assert [u.getattr(p).ino for p in ("/d/e", "/d", "/c2", "/d/u")] == [
        inos["/d/e"], inos["/d"], inos["/c"], inos["/u"]]
    new_file(u, "/new")
    assert u.getattr("/new").ino not in inos.values()


# -- read-only unions and concurrency ---------------------------------------------------


def test_read_only_union_refuses_every_write(stack: Stack) -> None:
    stack.lower({"f": b"x", "d": DIR})
    u = stack.union(writable=False)
    assert not u.writable and stack.union().writable
    assert read_all(u, "/f") == b"x"
    writes = [
        lambda: u.create("/n", 0o644, os.O_WRONLY), lambda: u.open("/f", os.O_WRONLY),
        lambda: u.truncate("/f", 0), lambda: u.mkdir("/n", 0o755),
        lambda: u.mknod("/n", stat.S_IFIFO | 0o644, 0), lambda: u.unlink("/f"),
        lambda: u.rmdir("/d"), lambda: u.rename("/f", "/g"), lambda: u.symlink("f", "/n"),
        lambda: u.link("/f", "/n"), lambda: u.chmod("/f", 0o600), lambda: u.chown("/f", 0, 0),
        lambda: u.utimens("/f", 0, 0), lambda: u.setxattr("/f", "user.a", b"", 0),
        lambda: u.removexattr("/f", "user.a"),
    ]
    for w in writes:
        check_errno(errno.EROFS, w)
    with pytest.raises(ValueError):
        Union(DwarfsImage.from_path(stack.images[0]), [])


def test_parallel_writers_readers_and_renames(stack: Stack) -> None:
    stack.lower({f"d{n}/f{i}": bytes([n, i]) * 100 for n in range(4) for i in range(20)})
    u = stack.union()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        for i in range(20):
            p = f"/d{n}/f{i}"
            write_file(u, p, b"W" * 10, os.O_RDWR)
            u.rename(p, f"/d{n}/g{i}")
            new_file(u, f"/d{n}/new{i}", b"new")
            u.unlink(f"/d{n}/new{i}")

    def reader(n: int) -> None:
        for _ in range(20):
            for name in u.readdir(f"/d{n}"):
                try:
                    data = read_all(u, f"/d{n}/{name}")
                except FileNotFoundError:
                    continue
                assert len(data) in (0, 3, 200) or data.startswith(b"W")

    def guarded(func: Callable[[int], None], n: int) -> None:
        try:
            func(n)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(f, n))
               for n in range(4) for f in (writer, reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for n in range(4):
        assert sorted(u.readdir(f"/d{n}")) == sorted(f"g{i}" for i in range(20))
        assert read_all(u, f"/d{n}/g7") == b"W" * 10 + bytes([n, 7]) * 95


# -- kernel overlayfs reads what the union writes, and the reverse -----------------------


@contextlib.contextmanager
def kernel_overlay(stack: Stack, tmp: Path) -> Iterator[Path]:
    """The layers' host trees and the upper, mounted by kernel overlayfs."""
    merged, work = tmp / "merged", tmp / "work"
    merged.mkdir()
    work.mkdir()
    lowers = ":".join(str(t) for t in stack.trees)
    res = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                          f"lowerdir={lowers},upperdir={stack.upper},workdir={work}",
                          str(merged)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"kernel overlayfs unavailable: {res.stderr.strip()}")
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=True)
        shutil.rmtree(work)


def _comparable(view: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in d.items() if k != "_ino"} for d in view),
                  key=lambda d: d["path"])


@needs_root
@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount")
def test_kernel_overlayfs_reads_the_union_upper(stack: Stack, tmp_path: Path) -> None:
    stack.lower({"f": b"1", "gone": b"", "d/a": b"a", "d/b": b"b", "r/x": b"x", "r/s/del": b"",
                 "o/y": b"y", "l": Sym("f")})
    stack.lower({"d/c": b"c", "o/z": b"z", "bottom": b"B"})
    u = stack.union()
    write_file(u, "/f", b"changed")
    u.unlink("/gone")
    u.unlink("/d/b")
    u.unlink("/r/s/del")  # a whiteout inside a directory that then moves
    u.rename("/r", "/r2")
    u.unlink("/o/y")
    u.unlink("/o/z")
    u.rmdir("/o")
    u.mkdir("/o", 0o755)
    new_file(u, "/o/new", b"n")
    u.chmod("/bottom", 0o600)
    u.link("/d/a", "/d/a2")
    expected = _comparable(view_fs(u))
    with kernel_overlay(stack, tmp_path) as merged:
        assert _comparable(view_dir(merged)) == expected


@needs_root
@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount")
def test_union_reads_a_kernel_overlayfs_upper(stack: Stack, tmp_path: Path) -> None:
    stack.lower({"f": b"1", "gone": b"", "d/a": b"a", "o/y": b"y"})
    with kernel_overlay(stack, tmp_path) as merged:
        (merged / "gone").unlink()
        (merged / "d/a").write_bytes(b"A")
        shutil.rmtree(merged / "o")
        (merged / "o").mkdir()
        (merged / "o/new").write_bytes(b"n")
        expected = _comparable(view_dir(merged))
    assert _comparable(view_fs(stack.union())) == expected


def test_listings_keep_each_layers_order(tmp_path: Path) -> None:
    """A directory of one lower layer is listed in that layer's order (a DwarFS image's:
    by name), not in a set's; a merged one in name order, so a program going through the
    tree meets each layer's files in the layer's order (the reader's read-ahead follows
    it). Names chosen so that a set of them iterates in another order."""
    names = [f"f{i:03d}" for i in range(200)]
    for side in ("lower", "top"):
        (tmp_path / side / "only").mkdir(parents=True)
        (tmp_path / side / "both").mkdir(parents=True)
    for i, name in enumerate(names):
        (tmp_path / "lower" / "only" / name).write_text(name)
        (tmp_path / ("lower" if i % 2 else "top") / "both" / name).write_text(name)
    images = []
    for side in ("lower", "top"):
        write_image(tmp_path / side, tmp_path / f"{side}.dwarfs")
        images.append(DwarfsImage.from_path(tmp_path / f"{side}.dwarfs"))
    (tmp_path / "upper").mkdir()
    (tmp_path / "upper" / "both").mkdir()
    (tmp_path / "upper" / "both" / "e-new").write_text("new")
    u = Union(HostDir(tmp_path / "upper"), images[::-1])
    try:
        assert u.readdir("/only") == names
        assert u.readdir("/both") == sorted([*names, "e-new"])
    finally:
        for img in images:
            img.close()
