"""Upper directories are shared between fim and the overlayfs backends; casefold through a mount.

fim writes an upper directory, then kernel overlayfs and fuse-overlayfs (over host
directories holding the same trees as fim's DwarFS layers) must show exactly what
fim showed; and the reverse: what those backends write, fim reads the same. This is
what lets `fim-overlay set` switch backends over one ``.data/root``.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.manifest import compare, view_dir
from tests.posix_suite import (
    FIM,
    Lowers,
    errno_of,
    mount,
    read,
    skip_unless_available,
    umount,
    write,
)

pytestmark = pytest.mark.fuse

REFERENCES = ("kernel-overlay", "fuse-overlayfs")
#: Keys of a view not compared when a reference backend reads an upper, and why.
IGNORED = {
    "fuse-overlayfs": {
        "nlink": "fuse-overlayfs 1.10 reports st_nlink 1 for one of two names of a "
        "copied-up hard link (see test_stack_posix KNOWN_BUGS)",
    },
}


@pytest.fixture(scope="module")
def lowers(tmp_path_factory: pytest.TempPathFactory) -> Lowers:
    return Lowers.build(tmp_path_factory.mktemp("lowers"))


@contextmanager
def mounted(backend: str, lowers: Lowers, upper: Path | None, tmp: Path,
            casefold: bool = False) -> Iterator[Path]:
    work, mountpoint = tmp / f"work-{backend}", tmp / f"mnt-{backend}"
    work.mkdir(exist_ok=True)
    mountpoint.mkdir(exist_ok=True)
    mount(backend, lowers, upper, work, mountpoint, casefold=casefold)
    try:
        yield mountpoint
    finally:
        umount(mountpoint)


def mutate(root: Path) -> None:
    """Changes every backend can make: the upper directory then holds every kind of entry."""
    r = str(root)
    write(f"{r}/new.txt", b"new\n")
    os.makedirs(f"{r}/newdir/a/b")
    write(f"{r}/newdir/a/b/deep.txt", b"deep\n")
    write(f"{r}/shared.txt", b"overwritten\n")
    write(f"{r}/a.txt", b"appended\n", os.O_WRONLY | os.O_APPEND)
    os.unlink(f"{r}/b.txt")
    os.unlink(f"{r}/dir/link")
    for rel in ("victim/sub/deep.txt", "victim/keep.txt"):
        os.unlink(f"{r}/{rel}")
    os.rmdir(f"{r}/victim/sub")
    os.rmdir(f"{r}/victim")
    os.mkdir(f"{r}/victim")  # opaque
    write(f"{r}/victim/fresh.txt", b"fresh\n")
    os.chmod(f"{r}/owned.txt", 0o600)
    os.chown(f"{r}/dir/one.txt", 1234, 5678)
    os.utime(f"{r}/dir/three.txt", ns=(1_500_000_000 * 10**9, 1_400_000_000 * 10**9))
    os.symlink("../a.txt", f"{r}/dir/up-link")
    os.link(f"{r}/exec.sh", f"{r}/dir/exec-link")
    os.setxattr(f"{r}/ren/f1.txt", "user.note", b"kept")
    os.mkfifo(f"{r}/fifo")
    os.mknod(f"{r}/dir/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.truncate(f"{r}/big.bin", 1000)
    write(f"{r}/gone.txt", b"over a lower whiteout\n")
    write(f"{r}/opq/z.txt", b"z\n")
    os.rename(f"{r}/ren/sub/f2.txt", f"{r}/f2-moved.txt")
    with open(f"{r}/sparse", "wb") as f:
        f.seek(5 << 20)
        f.write(b"end")


def mutate_dirs(root: Path) -> None:
    """Directory renames of lower directories: fim only (EXDEV on the others)."""
    os.rename(root / "ren", root / "ren2")
    os.rename(root / "dir" / "sub", root / "moved-sub")
    os.mkdir(root / "ren")


def view(root: Path) -> list[dict]:
    """The manifest view of a mount, with hard-link groups and user xattrs."""
    entries = view_dir(root)
    by_ino: dict[int, list[str]] = {}
    for e in entries:
        if e.get("nlink", 1) > 1:
            by_ino.setdefault(e["_ino"], []).append(e["path"])
    groups = {path: min(paths) for paths in by_ino.values() for path in paths}
    for e in entries:
        full = os.path.join(root, e["path"].lstrip("/"))
        names = os.listxattr(full, follow_symlinks=False)
        assert not [n for n in names if n.startswith("trusted.overlay.")], (e["path"], names)
        e["xattrs"] = {n: os.getxattr(full, n, follow_symlinks=False)
                       for n in sorted(names)
                       if n.startswith("user.") and not n.startswith("user.fuseoverlayfs.")}
        if e["path"] in groups:
            e["link_group"] = groups[e["path"]]
        del e["_ino"]
    return entries


def assert_same(expected: list[dict], got: list[dict], ignore: dict[str, str]) -> None:
    strip = [{k: v for k, v in e.items() if k not in ignore} for e in expected]
    assert compare(strip, got, inodes=False) == []


def copy_upper(upper: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-a", str(upper), str(dest)], check=True)
    return dest


@pytest.mark.parametrize("reader", REFERENCES)
def test_upper_written_by_fim(reader: str, lowers: Lowers, tmp_path: Path) -> None:
    skip_unless_available("fim")
    skip_unless_available(reader)
    upper = tmp_path / "upper"
    upper.mkdir()
    with mounted("fim", lowers, upper, tmp_path) as mp:
        mutate(mp)
        mutate_dirs(mp)
    # The reference is fim's view of the upper on a fresh mount: this test is about the
    # directory written (and a view inside the writing mount can lag on hard links, see
    # KNOWN_BUGS in test_stack_posix).
    with mounted("fim", lowers, upper, tmp_path) as mp:
        written = view(mp)
    for opaque in ("ren", "victim"):
        assert os.getxattr(upper / opaque, "trusted.overlay.opaque") == b"y"
    for gone in ("b.txt", "dir/link", "dir/sub"):
        assert os.lstat(upper / gone).st_rdev == 0 and stat.S_ISCHR(os.lstat(upper / gone).st_mode)
    with mounted(reader, lowers, copy_upper(upper, tmp_path / "copy"), tmp_path) as mp:
        assert_same(written, view(mp), IGNORED.get(reader, {}))


@pytest.mark.parametrize("writer", REFERENCES)
def test_upper_read_by_fim(writer: str, lowers: Lowers, tmp_path: Path) -> None:
    skip_unless_available("fim")
    skip_unless_available(writer)
    upper = tmp_path / "upper"
    upper.mkdir()
    with mounted(writer, lowers, upper, tmp_path) as mp:
        mutate(mp)
    # The reference is the writer's view on a fresh mount: inside the writing mount
    # fuse-overlayfs can show the mtime its cached attributes held, a second before the
    # one the upper file got (CI saw new.txt 1 s apart).
    with mounted(writer, lowers, upper, tmp_path) as mp:
        written = view(mp)
    with mounted("fim", lowers, copy_upper(upper, tmp_path / "copy"), tmp_path) as mp:
        assert_same(written, view(mp), {})


# -- casefold through the mount ----------------------------------------------------------


def test_casefold_over_union(lowers: Lowers, tmp_path: Path) -> None:
    skip_unless_available("fim")
    upper = tmp_path / "upper"
    upper.mkdir()
    with mounted("fim", lowers, upper, tmp_path, casefold=True) as mp:
        m = str(mp)
        write(f"{m}/READme.md", b"# hi\n")
        assert os.stat(f"{m}/readME.md").st_size == 5
        assert "READme.md" in os.listdir(m)
        assert not {"readME.md", "readme.md"} & set(os.listdir(m))
        assert read(f"{m}/DIR/Sub/TWO.txt") == b"two\n"  # lower entries, any case
        write(f"{m}/A.TXT", b"via caps\n")  # the lower a.txt, not a new file
        assert read(f"{m}/A.TXT") == b"via caps\n"
        assert "A.TXT" not in os.listdir(m)
        assert errno_of(os.mkdir, f"{m}/Dir") == errno.EEXIST
        os.rename(f"{m}/b.txt", f"{m}/B.txt")  # a change of case only
        assert "B.txt" in os.listdir(m) and "b.txt" not in os.listdir(m)
        assert errno_of(os.stat, f"{m}/GONE.txt") == errno.ENOENT  # whiteouts hide any case
    assert (upper / "READme.md").is_file()  # the upper keeps the typed case
    with mounted("fim", lowers, upper, tmp_path, casefold=True) as mp:
        assert read(f"{mp}/readme.MD") == b"# hi\n"
        assert {"READme.md", "B.txt", "a.txt"} <= set(os.listdir(mp))
        assert read(f"{mp}/a.txt") == b"via caps\n"


def test_casefold_coherence_across_spellings(lowers: Lowers, tmp_path: Path) -> None:
    skip_unless_available("fim")
    upper = tmp_path / "upper"
    upper.mkdir()
    with mounted("fim", lowers, upper, tmp_path, casefold=True) as mp:
        assert os.stat(f"{mp}/a.txt").st_size == 6
        write(f"{mp}/A.TXT", b"written via caps\n")
        assert os.stat(f"{mp}/a.txt").st_size == 17
        assert read(f"{mp}/a.txt") == b"written via caps\n"


def test_casefold_over_bare_layer(tmp_path: Path) -> None:
    skip_unless_available("fim")
    tree = tmp_path / "tree"
    (tree / "Docs").mkdir(parents=True)
    (tree / "Docs" / "READme.md").write_bytes(b"read me\n")
    (tree / "Makefile").write_bytes(b"all:\n")
    image = tmp_path / "layer.dwarfs"
    subprocess.run([*FIM, "create", "-l", "1", str(tree), str(image)], check=True,
                   stdout=subprocess.DEVNULL)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    subprocess.run([*FIM, "mount", "--layer", str(image), "--casefold", str(mountpoint)],
                   check=True)
    try:
        m = str(mountpoint)
        assert os.stat(f"{m}/docs/readME.md").st_size == 8
        assert read(f"{m}/DOCS/readme.MD") == b"read me\n"
        assert os.listdir(f"{m}/docs") == ["READme.md"]
        assert sorted(os.listdir(m)) == ["Docs", "Makefile"]
        assert read(f"{m}/makefile") == b"all:\n"
        assert errno_of(os.open, f"{m}/new", os.O_WRONLY | os.O_CREAT) == errno.EROFS
    finally:
        umount(mountpoint)
