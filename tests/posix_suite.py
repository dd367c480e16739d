"""A POSIX behaviour suite for a writable union mount, written once, run on every backend.

Every ``case_*`` function takes a :class:`Mount` and uses plain ``os`` calls on its
root, so the same expectations hold fim's single mount, kernel overlayfs and
fuse-overlayfs over the same two lower trees (:func:`build_lowers`). Where the
backends legitimately differ, the case looks its expectation up per backend (see
:data:`LOWER_DIR_RENAME`); everywhere else overlayfs defines the behaviour and all
backends must agree.

The lower trees, bottom (A) to top (B)::

    A: a.txt shared.txt gone.txt owned.txt big.bin exec.sh
       dir/{one.txt, link -> one.txt, sub/two.txt}  opq/x.txt
       victim/{keep.txt, sub/deep.txt}  ren/{f1.txt, sub/f2.txt}
    B: b.txt shared.txt (shadows A's)  gone.txt (whiteout: char device 0:0)
       dir/three.txt  opq/{.wh..wh..opq, y.txt} (opaque: hides A's opq/x.txt)
       ren/sub/f3.txt

The DwarFS layers mark the opaque directory with the marker entry; kernel overlayfs
only knows the xattr, so :func:`overlay_tree` converts a tree for the host-directory
backends.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

FIM = [sys.executable, "-m", "fim.cli.fim"]
T0 = 1_600_000_000  # whole seconds: DwarFS keeps second resolution by default
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
BIG = bytes((i * 31 + i // 997) & 0xFF for i in range(3 * 1024 * 1024 + 321))
OWNER = (1000, 100)

#: Backends, in the order tests are parametrized.
BACKENDS = ("fim", "kernel-overlay", "fuse-overlayfs")

#: ``os.rename`` of a directory that comes from the lower layers, by backend: the
#: errno, or None for "renamed". Overlayfs without redirect_dir (the kernel default,
#: and what the kernel backend mounts with) refuses with EXDEV and leaves the copy to
#: the caller (``mv`` falls back to copy+delete); fuse-overlayfs does the same. fim
#: deliberately renames it (copy-up of the tree, whiteout, opaque directory), because
#: programs call rename(2) on directories and expect it to work.
LOWER_DIR_RENAME: dict[str, int | None] = {
    "fim": None,
    "kernel-overlay": errno.EXDEV,
    "fuse-overlayfs": errno.EXDEV,
}


@dataclass
class Mount:
    """One mounted union: where it is, its upper directory, and how to mount it again."""

    backend: str
    root: Path
    upper: Path
    remount: Callable[[], None]

    def p(self, rel: str) -> str:
        return str(self.root / rel)


# -- the lower trees -------------------------------------------------------------------


def _put(root: Path, rel: str, data: bytes, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _freeze_times(root: Path) -> None:
    """Every entry gets mtime = atime = T0, deepest first so directories keep it too."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(T0 * 10**9,) * 2, follow_symlinks=False)
    os.utime(root, ns=(T0 * 10**9,) * 2)


def build_lowers(base: Path) -> tuple[Path, Path]:
    """Create the lower trees A (bottom) and B (top) under ``base``, as the layers hold them."""
    a, b = base / "A", base / "B"
    for rel, data in [("a.txt", b"alpha\n"), ("shared.txt", b"from A\n"),
                      ("gone.txt", b"whited out by B\n"), ("dir/one.txt", b"one\n"),
                      ("dir/sub/two.txt", b"two\n"), ("opq/x.txt", b"hidden by opaque\n"),
                      ("victim/keep.txt", b"keep\n"), ("victim/sub/deep.txt", b"deep\n"),
                      ("ren/f1.txt", b"f1\n"), ("ren/sub/f2.txt", b"f2\n"), ("big.bin", BIG)]:
        _put(a, rel, data)
    _put(a, "exec.sh", b"#!/bin/sh\necho hi\n", 0o755)
    _put(a, "owned.txt", b"owned by 1000\n", 0o640)
    os.chown(a / "owned.txt", *OWNER)
    os.symlink("one.txt", a / "dir" / "link")
    for rel, data in [("b.txt", b"beta\n"), ("shared.txt", b"from B\n"),
                      ("dir/three.txt", b"three\n"), ("opq/y.txt", b"y\n"),
                      (f"opq/{OPAQUE_MARKER}", b""), ("ren/sub/f3.txt", b"f3\n")]:
        _put(b, rel, data)
    os.mknod(b / "gone.txt", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    for tree in (a, b):
        _freeze_times(tree)
    return a, b


def overlay_tree(tree: Path, dest: Path) -> Path:
    """A copy of ``tree`` in kernel overlayfs form: opaque markers become the xattr."""
    subprocess.run(["cp", "-a", str(tree), str(dest)], check=True)  # devices, owners, times
    for dirpath, _, filenames in os.walk(dest):
        if OPAQUE_MARKER in filenames:
            os.unlink(os.path.join(dirpath, OPAQUE_MARKER))
            os.setxattr(dirpath, OPAQUE_XATTR, b"y")
    _freeze_times(dest)
    return dest


def make_layer(tree: Path, image: Path) -> Path:
    """The DwarFS layer of ``tree`` (``fim create``)."""
    subprocess.run([*FIM, "create", "-l", "1", str(tree), str(image)], check=True,
                   stdout=subprocess.DEVNULL)
    return image


@dataclass(frozen=True)
class Lowers:
    """The same two trees as DwarFS layers (fim) and as host directories (the others)."""

    images: tuple[Path, Path]  # A, B: bottom first, as `fim mount --layer` takes them
    dirs: tuple[Path, Path]

    @classmethod
    def build(cls, base: Path) -> Lowers:
        a, b = build_lowers(base / "trees")
        images = (make_layer(a, base / "A.dwarfs"), make_layer(b, base / "B.dwarfs"))
        return cls(images, (overlay_tree(a, base / "A.ovl"), overlay_tree(b, base / "B.ovl")))


# -- mounting the backends -------------------------------------------------------------


def missing_tool(backend: str) -> str | None:
    """Why ``backend`` cannot run here, or None."""
    if backend == "fuse-overlayfs" and shutil.which("fuse-overlayfs") is None:
        return "fuse-overlayfs is not installed"
    if os.geteuid() != 0:
        return "needs root (overlay mounts, whiteout device nodes, chown)"
    if not os.path.exists("/dev/fuse") and backend != "kernel-overlay":
        return "needs /dev/fuse"
    if backend == "kernel-overlay":
        with open("/proc/filesystems") as f:
            if "overlay" not in f.read().split():
                return "the kernel has no overlay filesystem"
    return None


def mount_cmd(backend: str, lowers: Lowers, upper: Path | None, work: Path | None,
              mountpoint: Path, *, casefold: bool = False) -> list[str]:
    """The command that mounts the union of ``lowers`` (+ ``upper``) on ``mountpoint``."""
    if backend == "fim":
        argv = [*FIM, "mount"]
        for image in lowers.images:
            argv += ["--layer", str(image)]
        if upper is not None:
            argv += ["--upper", str(upper)]
        if casefold:
            argv.append("--casefold")
        return [*argv, str(mountpoint)]
    lowerdir = ":".join(str(d) for d in reversed(lowers.dirs))  # topmost first
    opts = f"lowerdir={lowerdir}"
    if upper is not None:
        opts += f",upperdir={upper},workdir={work}"
    if backend == "kernel-overlay":
        # Spelled out so the run does not depend on the kernel's defaults.
        return ["mount", "-t", "overlay", "overlay", "-o",
                opts + ",redirect_dir=off,index=off,metacopy=off", str(mountpoint)]
    if backend == "fuse-overlayfs":
        return ["fuse-overlayfs", "-o", opts, str(mountpoint)]
    raise ValueError(backend)


def mount(backend: str, lowers: Lowers, upper: Path | None, work: Path | None,
          mountpoint: Path, *, casefold: bool = False) -> None:
    res = subprocess.run(mount_cmd(backend, lowers, upper, work, mountpoint, casefold=casefold),
                         capture_output=True, text=True)
    if res.returncode != 0 or not os.path.ismount(mountpoint):
        raise RuntimeError(f"{backend} mount failed ({res.returncode}): {res.stderr.strip()}")


def umount(mountpoint: Path) -> None:
    """Unmount (any backend); a mount still busy after a few tries is detached lazily."""
    for _ in range(50):
        if not os.path.ismount(mountpoint):
            return
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


# -- helpers ----------------------------------------------------------------------------


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path: str, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def errno_of(func: Callable[..., object], *args: object) -> int | None:
    """The errno ``func(*args)`` fails with, or None when it succeeds."""
    try:
        func(*args)
    except OSError as e:
        return e.errno
    return None


def assert_gone(path: str) -> None:
    assert errno_of(os.lstat, path) == errno.ENOENT, f"{path} still exists"


def is_whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


ROOT_NAMES = {"a.txt", "b.txt", "shared.txt", "owned.txt", "big.bin", "exec.sh", "dir", "opq",
              "victim", "ren"}


# -- the cases -------------------------------------------------------------------------


def case_merged_view(m: Mount) -> None:
    """Top layer wins, directories merge, whiteouts and opaque directories hide."""
    assert set(os.listdir(m.root)) == ROOT_NAMES
    assert sorted(os.listdir(m.p("dir"))) == ["link", "one.txt", "sub", "three.txt"]
    assert os.listdir(m.p("opq")) == ["y.txt"]
    assert read(m.p("shared.txt")) == b"from B\n"
    assert read(m.p("big.bin")) == BIG
    assert os.readlink(m.p("dir/link")) == "one.txt"
    assert read(m.p("dir/link")) == b"one\n"
    assert_gone(m.p("gone.txt"))
    assert_gone(m.p(f"opq/{OPAQUE_MARKER}"))
    assert_gone(m.p("opq/x.txt"))
    st = os.stat(m.p("owned.txt"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (*OWNER, 0o640)
    assert st.st_mtime_ns == T0 * 10**9
    assert os.access(m.p("exec.sh"), os.X_OK)
    assert os.stat(m.p("a.txt")).st_ino == os.stat(m.p("a.txt")).st_ino
    assert OPAQUE_XATTR not in os.listxattr(m.p("opq"))


def case_create_write_read(m: Mount) -> None:
    write(m.p("new.txt"), b"hello\n")
    assert read(m.p("new.txt")) == b"hello\n"
    assert os.stat(m.p("new.txt")).st_size == 6
    assert errno_of(os.open, m.p("new.txt"), os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert errno_of(os.open, m.p("a.txt"), os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    # A file in a lower-only directory: the directory is copied up on the way.
    write(m.p("dir/sub/new.txt"), b"deep new\n")
    assert sorted(os.listdir(m.p("dir/sub"))) == ["new.txt", "two.txt"]
    # pwrite in the middle, read back at an offset.
    fd = os.open(m.p("new.txt"), os.O_RDWR)
    try:
        assert os.pwrite(fd, b"J", 0) == 1
        assert os.pread(fd, 3, 3) == b"lo\n"
        os.fsync(fd)
    finally:
        os.close(fd)
    assert read(m.p("new.txt")) == b"Jello\n"
    # Overwriting a lower file copies it up; the other layers are untouched.
    write(m.p("shared.txt"), b"mine\n")
    assert read(m.p("shared.txt")) == b"mine\n"
    m.remount()
    assert read(m.p("shared.txt")) == b"mine\n"
    assert read(m.p("dir/sub/new.txt")) == b"deep new\n"
    assert read(m.p("new.txt")) == b"Jello\n"


def case_append(m: Mount) -> None:
    flags = os.O_WRONLY | os.O_APPEND
    write(m.p("a.txt"), b"more\n", flags)  # copy-up of a lower file, then append
    assert read(m.p("a.txt")) == b"alpha\nmore\n"
    fd1, fd2 = os.open(m.p("a.txt"), flags), os.open(m.p("a.txt"), flags)
    try:
        os.write(fd1, b"1")
        os.write(fd2, b"2")
        os.lseek(fd1, 0, os.SEEK_SET)  # O_APPEND ignores the position
        os.write(fd1, b"3")
    finally:
        os.close(fd1)
        os.close(fd2)
    assert read(m.p("a.txt")) == b"alpha\nmore\n123"
    write(m.p("log"), b"x", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    write(m.p("log"), b"y", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    assert read(m.p("log")) == b"xy"


def case_truncate(m: Mount) -> None:
    os.truncate(m.p("a.txt"), 2)
    assert read(m.p("a.txt")) == b"al"
    os.truncate(m.p("b.txt"), 8)  # extending fills with zeros
    assert read(m.p("b.txt")) == b"beta\n\0\0\0"
    fd = os.open(m.p("shared.txt"), os.O_RDWR)
    try:
        os.ftruncate(fd, 0)
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"z")
    finally:
        os.close(fd)
    assert read(m.p("shared.txt")) == b"z"
    write(m.p("dir/one.txt"), b"1", os.O_WRONLY | os.O_TRUNC)
    assert read(m.p("dir/one.txt")) == b"1"
    assert read(m.p("dir/link")) == b"1"
    m.remount()
    assert [read(m.p(n)) for n in ("a.txt", "b.txt", "shared.txt")] == [
        b"al", b"beta\n\0\0\0", b"z"]


def case_rename_files(m: Mount) -> None:
    os.rename(m.p("a.txt"), m.p("a2.txt"))  # lower file to a new name
    assert_gone(m.p("a.txt"))
    assert read(m.p("a2.txt")) == b"alpha\n"
    os.rename(m.p("b.txt"), m.p("shared.txt"))  # lower over lower (replaces)
    assert read(m.p("shared.txt")) == b"beta\n"
    assert_gone(m.p("b.txt"))
    os.rename(m.p("dir/one.txt"), m.p("victim/one.txt"))  # across lower directories
    assert read(m.p("victim/one.txt")) == b"one\n"
    assert "one.txt" not in os.listdir(m.p("dir"))
    write(m.p("u.txt"), b"upper\n")
    os.rename(m.p("u.txt"), m.p("dir/sub/u.txt"))  # upper file into a lower directory
    os.rename(m.p("exec.sh"), m.p("dir/exec.sh"))
    assert os.access(m.p("dir/exec.sh"), os.X_OK)
    assert errno_of(os.rename, m.p("a2.txt"), m.p("dir")) == errno.EISDIR
    assert errno_of(os.rename, m.p("nope"), m.p("x")) == errno.ENOENT
    assert errno_of(os.rename, m.p("gone.txt"), m.p("x")) == errno.ENOENT
    m.remount()
    assert set(os.listdir(m.root)) == ROOT_NAMES - {"a.txt", "b.txt", "exec.sh"} | {"a2.txt"}
    assert read(m.p("a2.txt")) == b"alpha\n"
    assert read(m.p("shared.txt")) == b"beta\n"
    assert read(m.p("dir/sub/u.txt")) == b"upper\n"
    assert sorted(os.listdir(m.p("victim"))) == ["keep.txt", "one.txt", "sub"]


def case_rename_upper_dir(m: Mount) -> None:
    os.makedirs(m.p("new/a/b"))
    write(m.p("new/a/b/f"), b"f\n")
    os.rename(m.p("new"), m.p("moved"))
    assert read(m.p("moved/a/b/f")) == b"f\n"
    assert_gone(m.p("new"))
    os.mkdir(m.p("empty"))
    os.rename(m.p("moved"), m.p("empty"))  # onto an empty directory
    assert read(m.p("empty/a/b/f")) == b"f\n"
    assert errno_of(os.rename, m.p("empty"), m.p("empty/a/inside")) == errno.EINVAL
    assert errno_of(os.rename, m.p("empty/a"), m.p("victim")) == errno.ENOTEMPTY
    assert errno_of(os.rename, m.p("empty/a"), m.p("a.txt")) == errno.ENOTDIR


def case_rename_lower_dir(m: Mount) -> None:
    """``victim`` (layer A only) renamed; EXDEV on kernel overlayfs (see LOWER_DIR_RENAME)."""
    expected = LOWER_DIR_RENAME[m.backend]
    assert errno_of(os.rename, m.p("victim"), m.p("victim2")) == expected
    if expected is not None:
        assert sorted(os.listdir(m.p("victim"))) == ["keep.txt", "sub"]
        return
    assert_gone(m.p("victim"))
    assert read(m.p("victim2/sub/deep.txt")) == b"deep\n"
    os.mkdir(m.p("victim"))  # the old name is free and must come back empty
    assert os.listdir(m.p("victim")) == []
    os.rename(m.p("dir/sub"), m.p("victim/sub"))  # a nested lower directory, into the new one
    assert os.listdir(m.p("victim/sub")) == ["two.txt"]
    m.remount()
    assert sorted(os.listdir(m.p("victim2"))) == ["keep.txt", "sub"]
    assert os.listdir(m.p("victim")) == ["sub"]
    assert read(m.p("victim/sub/two.txt")) == b"two\n"
    assert sorted(os.listdir(m.p("dir"))) == ["link", "one.txt", "three.txt"]


def case_rename_merged_dir(m: Mount) -> None:
    """``ren`` merges A and B (see LOWER_DIR_RENAME)."""
    expected = LOWER_DIR_RENAME[m.backend]
    assert errno_of(os.rename, m.p("ren"), m.p("ren2")) == expected
    if expected is not None:
        assert sorted(os.listdir(m.p("ren"))) == ["f1.txt", "sub"]
        return
    want = {"f1.txt": b"f1\n", "sub/f2.txt": b"f2\n", "sub/f3.txt": b"f3\n"}
    assert_gone(m.p("ren"))
    assert {rel: read(m.p(f"ren2/{rel}")) for rel in want} == want
    os.mkdir(m.p("ren"))
    assert os.listdir(m.p("ren")) == []
    m.remount()
    assert os.listdir(m.p("ren")) == []
    assert {rel: read(m.p(f"ren2/{rel}")) for rel in want} == want


def case_unlink_whiteouts(m: Mount) -> None:
    os.unlink(m.p("a.txt"))
    os.unlink(m.p("dir/link"))  # a lower symlink
    os.unlink(m.p("shared.txt"))  # present in both lower layers
    for name in ("a.txt", "dir/link", "shared.txt"):
        assert_gone(m.p(name))
        assert is_whiteout(m.upper / name), f"{name}: no whiteout in the upper directory"
    assert "a.txt" not in os.listdir(m.root)
    assert errno_of(os.unlink, m.p("a.txt")) == errno.ENOENT
    assert errno_of(os.unlink, m.p("dir")) == errno.EISDIR
    write(m.p("new.txt"), b"n")
    os.unlink(m.p("new.txt"))  # upper only: no whiteout needed, but none visible either
    assert_gone(m.p("new.txt"))
    m.remount()
    for name in ("a.txt", "dir/link", "shared.txt"):
        assert_gone(m.p(name))
    assert sorted(os.listdir(m.p("dir"))) == ["one.txt", "sub", "three.txt"]
    write(m.p("a.txt"), b"reborn\n")  # over the whiteout
    assert read(m.p("a.txt")) == b"reborn\n"
    write(m.p("gone.txt"), b"back\n")  # over a whiteout of a lower layer
    assert read(m.p("gone.txt")) == b"back\n"
    m.remount()
    assert read(m.p("a.txt")) == b"reborn\n"
    assert read(m.p("gone.txt")) == b"back\n"


def case_unlink_open_file(m: Mount) -> None:
    """An open file outlives its name, and the name is gone at once from listings too."""
    fd = os.open(m.p("dir/tmpfile"), os.O_RDWR | os.O_CREAT, 0o600)
    lower_fd = os.open(m.p("dir/one.txt"), os.O_RDONLY)
    try:
        os.write(fd, b"data")
        os.unlink(m.p("dir/tmpfile"))
        os.unlink(m.p("dir/one.txt"))
        assert sorted(os.listdir(m.p("dir"))) == ["link", "sub", "three.txt"]
        os.write(fd, b"+more")
        assert os.pread(fd, 100, 0) == b"data+more"
        assert os.fstat(fd).st_size == 9
        assert os.read(lower_fd, 100) == b"one\n"
    finally:
        os.close(fd)
        os.close(lower_fd)
    assert sorted(os.listdir(m.p("dir"))) == ["link", "sub", "three.txt"]
    m.remount()
    assert sorted(os.listdir(m.p("dir"))) == ["link", "sub", "three.txt"]


def case_rmdir_lower(m: Mount) -> None:
    assert errno_of(os.rmdir, m.p("victim")) == errno.ENOTEMPTY
    assert errno_of(os.rmdir, m.p("a.txt")) == errno.ENOTDIR
    os.unlink(m.p("victim/sub/deep.txt"))
    os.rmdir(m.p("victim/sub"))
    assert errno_of(os.rmdir, m.p("victim")) == errno.ENOTEMPTY
    os.unlink(m.p("victim/keep.txt"))
    assert os.listdir(m.p("victim")) == []
    os.rmdir(m.p("victim"))
    assert_gone(m.p("victim"))
    assert is_whiteout(m.upper / "victim")
    m.remount()
    assert_gone(m.p("victim"))
    assert "victim" not in os.listdir(m.root)


def _remove_victim(m: Mount) -> None:
    for rel in ("victim/sub/deep.txt", "victim/keep.txt"):
        os.unlink(m.p(rel))
    os.rmdir(m.p("victim/sub"))
    os.rmdir(m.p("victim"))


def case_opaque_dir(m: Mount) -> None:
    """rmdir of a lower directory, mkdir again: the old content must not come back."""
    _remove_victim(m)
    os.mkdir(m.p("victim"))
    assert os.listdir(m.p("victim")) == []
    assert os.getxattr(m.upper / "victim", OPAQUE_XATTR) == b"y"
    assert OPAQUE_XATTR not in os.listxattr(m.p("victim"))
    write(m.p("victim/fresh.txt"), b"fresh\n")
    m.remount()
    assert os.listdir(m.p("victim")) == ["fresh.txt"]
    assert_gone(m.p("victim/keep.txt"))
    assert_gone(m.p("victim/sub"))
    # An opaque directory of a lower layer stays opaque after a copy-up.
    write(m.p("opq/z.txt"), b"z\n")
    assert sorted(os.listdir(m.p("opq"))) == ["y.txt", "z.txt"]
    m.remount()
    assert sorted(os.listdir(m.p("opq"))) == ["y.txt", "z.txt"]


def case_opaque_dir_old_names(m: Mount) -> None:
    """In a re-made directory, the names of its old content are free (mkdir, O_EXCL)."""
    _remove_victim(m)
    os.mkdir(m.p("victim"))
    os.mkdir(m.p("victim/sub"))
    assert os.listdir(m.p("victim/sub")) == []
    fd = os.open(m.p("victim/keep.txt"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    assert read(m.p("victim/keep.txt")) == b""
    m.remount()
    assert sorted(os.listdir(m.p("victim"))) == ["keep.txt", "sub"]
    assert os.listdir(m.p("victim/sub")) == []


def case_symlinks(m: Mount) -> None:
    os.symlink("dir/one.txt", m.p("ln"))
    assert os.readlink(m.p("ln")) == "dir/one.txt"
    assert stat.S_ISLNK(os.lstat(m.p("ln")).st_mode)
    assert read(m.p("ln")) == b"one\n"
    os.symlink("/nowhere/at/all", m.p("dir/dangling"))
    assert os.readlink(m.p("dir/dangling")) == "/nowhere/at/all"
    assert errno_of(os.stat, m.p("dir/dangling")) == errno.ENOENT
    assert errno_of(os.symlink, "x", m.p("a.txt")) == errno.EEXIST
    assert errno_of(os.readlink, m.p("a.txt")) == errno.EINVAL
    os.rename(m.p("dir/link"), m.p("link2"))  # a lower symlink keeps its (now dangling) target
    assert os.readlink(m.p("link2")) == "one.txt"
    m.remount()
    assert os.readlink(m.p("ln")) == "dir/one.txt"
    assert os.readlink(m.p("link2")) == "one.txt"


def case_hard_links(m: Mount) -> None:
    os.link(m.p("a.txt"), m.p("dir/a-link"))  # a lower file
    assert os.stat(m.p("a.txt")).st_ino == os.stat(m.p("dir/a-link")).st_ino
    assert os.stat(m.p("dir/a-link")).st_nlink == 2
    assert read(m.p("dir/a-link")) == b"alpha\n"
    write(m.p("n.txt"), b"n\n")
    os.link(m.p("n.txt"), m.p("n2.txt"))
    assert os.stat(m.p("n.txt")).st_ino == os.stat(m.p("n2.txt")).st_ino
    assert read(m.p("n2.txt")) == b"n\n"
    assert errno_of(os.link, m.p("dir"), m.p("dir2")) == errno.EPERM
    assert errno_of(os.link, m.p("a.txt"), m.p("b.txt")) == errno.EEXIST
    assert errno_of(os.link, m.p("gone.txt"), m.p("x")) == errno.ENOENT


def case_hard_link_coherence(m: Mount) -> None:
    """What is done through one name of a hard link shows at once through the other."""
    os.link(m.p("a.txt"), m.p("dir/a-link"))
    assert os.stat(m.p("a.txt")).st_nlink == os.stat(m.p("dir/a-link")).st_nlink == 2
    write(m.p("dir/a-link"), b"changed, and longer\n", os.O_WRONLY | os.O_TRUNC)
    assert read(m.p("a.txt")) == b"changed, and longer\n"
    os.chmod(m.p("a.txt"), 0o600)
    assert stat.S_IMODE(os.stat(m.p("dir/a-link")).st_mode) == 0o600
    os.unlink(m.p("a.txt"))
    assert os.stat(m.p("dir/a-link")).st_nlink == 1


def case_hard_links_remount(m: Mount) -> None:
    os.link(m.p("a.txt"), m.p("dir/a-link"))
    m.remount()
    st1, st2 = os.stat(m.p("a.txt")), os.stat(m.p("dir/a-link"))
    assert st1.st_ino == st2.st_ino
    assert st1.st_nlink == st2.st_nlink == 2


def case_metadata(m: Mount) -> None:
    """chmod/chown/utimens copy a lower file up and keep everything they do not change."""
    ino = os.stat(m.p("owned.txt")).st_ino
    os.chmod(m.p("owned.txt"), 0o600)
    st = os.stat(m.p("owned.txt"))
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, *OWNER)
    assert st.st_mtime_ns == T0 * 10**9
    assert st.st_ino == ino  # stable across the copy-up
    assert read(m.p("owned.txt")) == b"owned by 1000\n"
    os.chown(m.p("a.txt"), 1234, 5678)
    st = os.stat(m.p("a.txt"))
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (1234, 5678, T0 * 10**9)
    os.chown(m.p("a.txt"), -1, 42)
    assert (os.stat(m.p("a.txt")).st_uid, os.stat(m.p("a.txt")).st_gid) == (1234, 42)
    os.utime(m.p("b.txt"), ns=(1_500_000_000_111_222_333, 1_400_000_000_444_555_666))
    st = os.stat(m.p("b.txt"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_500_000_000_111_222_333,
                                                1_400_000_000_444_555_666)
    os.chown(m.p("dir/link"), 7, 8, follow_symlinks=False)
    os.chmod(m.p("dir"), 0o700)  # a merged directory
    os.utime(m.p("dir"), ns=(T0 * 10**9, 1_300_000_000_000_000_007))
    m.remount()
    assert stat.S_IMODE(os.stat(m.p("owned.txt")).st_mode) == 0o600
    assert (os.stat(m.p("a.txt")).st_uid, os.stat(m.p("a.txt")).st_gid) == (1234, 42)
    assert os.stat(m.p("b.txt")).st_mtime_ns == 1_400_000_000_444_555_666
    st = os.stat(m.p("dir"))
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o700, 1_300_000_000_000_000_007)
    assert sorted(os.listdir(m.p("dir"))) == ["link", "one.txt", "sub", "three.txt"]
    st = os.lstat(m.p("dir/link"))
    assert (st.st_uid, st.st_gid) == (7, 8)
    assert os.readlink(m.p("dir/link")) == "one.txt"


def case_copy_up_keeps_parent_times(m: Mount) -> None:
    """A copy-up is invisible: the directories it fills in the upper keep their times."""
    os.chmod(m.p("dir/sub/two.txt"), 0o600)
    assert os.stat(m.p("dir/sub")).st_mtime_ns == T0 * 10**9
    assert os.stat(m.p("dir")).st_mtime_ns == T0 * 10**9
    os.utime(m.p("victim"), ns=(T0 * 10**9, 1_300_000_000_000_000_007))
    os.chown(m.p("victim/keep.txt"), 7, 8)
    assert os.stat(m.p("victim")).st_mtime_ns == 1_300_000_000_000_000_007
    m.remount()
    assert os.stat(m.p("dir/sub")).st_mtime_ns == T0 * 10**9
    assert os.stat(m.p("victim")).st_mtime_ns == 1_300_000_000_000_000_007


def case_xattrs(m: Mount) -> None:
    os.setxattr(m.p("a.txt"), "user.color", b"blue")  # copy-up of a lower file
    os.setxattr(m.p("dir"), "user.dir", b"\x00binary\xff")
    write(m.p("new.txt"), b"")
    os.setxattr(m.p("new.txt"), "user.k", b"v")
    assert os.getxattr(m.p("a.txt"), "user.color") == b"blue"
    assert read(m.p("a.txt")) == b"alpha\n"
    assert errno_of(os.getxattr, m.p("a.txt"), "user.none") == errno.ENODATA
    assert errno_of(os.setxattr, m.p("a.txt"), "user.color", b"x", os.XATTR_CREATE) == \
        errno.EEXIST
    assert errno_of(os.setxattr, m.p("b.txt"), "user.x", b"x", os.XATTR_REPLACE) == \
        errno.ENODATA
    os.setxattr(m.p("a.txt"), "user.color", b"red", os.XATTR_REPLACE)
    assert "user.color" in os.listxattr(m.p("a.txt"))
    os.setxattr(m.p("a.txt"), "user.tmp", b"t")
    os.removexattr(m.p("a.txt"), "user.tmp")
    assert errno_of(os.removexattr, m.p("a.txt"), "user.tmp") == errno.ENODATA
    m.remount()
    assert sorted(n for n in os.listxattr(m.p("a.txt")) if n.startswith("user.")) == [
        "user.color"]
    assert os.getxattr(m.p("a.txt"), "user.color") == b"red"
    assert os.getxattr(m.p("dir"), "user.dir") == b"\x00binary\xff"
    assert os.getxattr(m.p("new.txt"), "user.k") == b"v"
    assert not any(n.startswith("trusted.overlay.") for n in os.listxattr(m.p("dir")))
    os.rename(m.p("a.txt"), m.p("a2.txt"))  # xattrs travel with the file
    assert os.getxattr(m.p("a2.txt"), "user.color") == b"red"


def case_special_files(m: Mount) -> None:
    os.mkfifo(m.p("fifo"), 0o600)
    assert stat.S_ISFIFO(os.stat(m.p("fifo")).st_mode)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(read(m.p("fifo"))))
    reader.start()
    write(m.p("fifo"), b"through the pipe", os.O_WRONLY)
    reader.join(10)
    assert got == [b"through the pipe"]
    os.mknod(m.p("dir/null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    st = os.lstat(m.p("dir/null"))
    assert stat.S_ISCHR(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    os.mknod(m.p("plain"), stat.S_IFREG | 0o600)
    assert stat.S_ISREG(os.stat(m.p("plain")).st_mode)
    assert errno_of(os.mkfifo, m.p("a.txt")) == errno.EEXIST
    m.remount()
    assert stat.S_ISFIFO(os.lstat(m.p("fifo")).st_mode)
    assert os.lstat(m.p("dir/null")).st_rdev == os.makedev(1, 3)


def case_sparse(m: Mount) -> None:
    hole = 32 << 20
    fd = os.open(m.p("sparse"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.lseek(fd, hole, os.SEEK_SET)
        os.write(fd, b"end")
        os.fsync(fd)
        assert os.fstat(fd).st_size == hole + 3
        assert os.pread(fd, 4096, 0) == bytes(4096)
        assert os.pread(fd, 8, hole - 4) == b"\0\0\0\0end"
    finally:
        os.close(fd)
    st = os.stat(m.p("sparse"))
    assert st.st_blocks * 512 < 1 << 20, "the hole was written out"
    os.truncate(m.p("a.txt"), 16 << 20)  # a lower file grown by truncate: sparse too
    with open(m.p("a.txt"), "rb") as f:
        assert f.read(8) == b"alpha\n\0\0"
        f.seek((16 << 20) - 2)
        assert f.read() == b"\0\0"
    m.remount()
    assert os.stat(m.p("sparse")).st_size == hole + 3


def case_large_file(m: Mount) -> None:
    chunk = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB
    h = hashlib.sha256()
    with open(m.p("large"), "wb") as f:
        for i in range(64):
            piece = bytes([i]) + chunk[1:]
            f.write(piece)
            h.update(piece)
    assert os.stat(m.p("large")).st_size == 64 << 20
    m.remount()
    got = hashlib.sha256()
    with open(m.p("large"), "rb", buffering=0) as f:
        while data := f.read(1 << 20):
            got.update(data)
    assert got.hexdigest() == h.hexdigest()
    fd = os.open(m.p("large"), os.O_RDWR)
    try:
        os.pwrite(fd, b"X" * 10, (40 << 20) - 5)  # across a MiB boundary
        assert os.pread(fd, 12, (40 << 20) - 6) == chunk[-6:-5] + b"X" * 10 + chunk[5:6]
    finally:
        os.close(fd)


def case_mmap(m: Mount) -> None:
    with open(m.p("big.bin"), "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:  # lower: copy-up
        assert mm[:4096] == BIG[:4096]
        assert mm[-100:] == BIG[-100:]
        mm[1000:1005] = b"MMAP!"
        mm.flush()
    data = read(m.p("big.bin"))
    assert data[1000:1005] == b"MMAP!"
    assert data[:1000] == BIG[:1000] and data[1005:] == BIG[1005:]
    write(m.p("map.new"), bytes(8192))
    with open(m.p("map.new"), "r+b") as f, mmap.mmap(f.fileno(), 8192) as mm:
        mm[4090:4100] = b"0123456789"
    with open(m.p("b.txt"), "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert mm[:] == b"beta\n"
    m.remount()
    assert read(m.p("map.new"))[4090:4100] == b"0123456789"
    assert read(m.p("big.bin"))[1000:1005] == b"MMAP!"


def case_parallel_io(m: Mount) -> None:
    """Writers on their own files, appenders on one file and readers of a lower file at once."""
    record = 64
    big_digest = hashlib.sha256(BIG).digest()

    def writer(i: int) -> bytes:
        data = bytes([i]) * 4096
        with open(m.p(f"w{i}"), "wb", buffering=0) as f:
            for _ in range(64):
                f.write(data)
        return read(m.p(f"w{i}"))

    def appender(i: int) -> None:
        fd = os.open(m.p("shared.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for j in range(100):
                os.write(fd, f"{i:02d}:{j:04d}".encode().ljust(record - 1, b".") + b"\n")
        finally:
            os.close(fd)

    def reader(_: int) -> bytes:
        return hashlib.sha256(read(m.p("big.bin"))).digest()

    with ThreadPoolExecutor(16) as pool:
        writes = [pool.submit(writer, i) for i in range(6)]
        appends = [pool.submit(appender, i) for i in range(4)]
        reads = [pool.submit(reader, i) for i in range(6)]
        for i, fut in enumerate(writes):
            assert fut.result() == bytes([i]) * (64 * 4096)
        for fut in appends:
            fut.result()
        assert all(fut.result() == big_digest for fut in reads)
    lines = read(m.p("shared.log")).splitlines()
    assert len(lines) == 400 and all(len(line) == record - 1 for line in lines)
    assert sorted(line[:7] for line in lines) == sorted(
        f"{i:02d}:{j:04d}".encode() for i in range(4) for j in range(100))


def case_readdir_during_change(m: Mount) -> None:
    """Entries added between two reads of one directory stream: old names come once each.

    Whether the new name shows is unspecified (POSIX); duplicates or losses are not.
    """
    old = ["link", "one.txt", "sub", "three.txt"]
    for new in ("0first", "m-middle", "zz-last"):
        with os.scandir(m.p("dir")) as it:
            names = [next(it).name]  # the first getdents fills its buffer with everything
            os.mknod(m.p(f"dir/{new}"), stat.S_IFREG | 0o644)
            names += [e.name for e in it]  # the second one asks the filesystem again
        assert len(names) == len(set(names)), f"duplicates: {sorted(names)}"
        assert set(old) <= set(names)
        old.append(new)


def case_listing_while_changing(m: Mount) -> None:
    """Listings stay consistent while another thread creates and deletes entries."""
    stable = {"link", "one.txt", "sub", "three.txt"}
    churn = {f"c{i}" for i in range(20)}
    stop = threading.Event()
    errors: list[BaseException] = []

    def mutate() -> None:
        # mknod, not open/close: an unlink racing the asynchronous release of a closed
        # file is case_unlink_open_file's subject, not this one's.
        try:
            n = 0
            while not stop.is_set():
                name = m.p(f"dir/c{n % 20}")
                if not os.path.lexists(name):
                    os.mknod(name, stat.S_IFREG | 0o644)
                if n % 3 == 0:
                    os.unlink(name)
                elif n % 5 == 0:
                    os.rename(name, m.p(f"dir/c{(n + 7) % 20}"))
                if n % 7 == 0 and n % 3:
                    os.unlink(m.p("dir/three.txt"))  # a lower entry comes and goes
                    os.mknod(m.p("dir/three.txt"), stat.S_IFREG | 0o644)
                n += 1
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    t = threading.Thread(target=mutate)
    t.start()
    try:
        deadline = time.monotonic() + 1.5
        listings = 0
        while time.monotonic() < deadline:
            names = os.listdir(m.p("dir"))
            assert len(names) == len(set(names)), f"duplicate names: {sorted(names)}"
            assert set(names) <= stable | churn, sorted(set(names) - stable - churn)
            assert stable - {"three.txt"} <= set(names)
            listings += 1
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert listings > 5
    final = {n for n in churn if os.path.exists(m.p(f"dir/{n}"))} | stable
    assert set(os.listdir(m.p("dir"))) == final


def case_statfs(m: Mount) -> None:
    """statfs reports the filesystem of the upper directory: that is where writes go."""
    st, host = os.statvfs(m.root), os.statvfs(m.upper)
    assert (st.f_frsize, st.f_blocks, st.f_files) == (host.f_frsize, host.f_blocks, host.f_files)
    assert not st.f_flag & os.ST_RDONLY


CASES: dict[str, Callable[[Mount], None]] = {
    name.removeprefix("case_"): func
    for name, func in sorted(globals().items())
    if name.startswith("case_") and callable(func)
}


def skip_unless_available(backend: str) -> None:
    reason = missing_tool(backend)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")
