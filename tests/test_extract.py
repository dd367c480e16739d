"""`fim extract`: real images against their manifests, and hostile trees from a double."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fim.app.errors import FimError
from fim.app.extract import extract_tree
from fim.cli import fim
from fim.cli.tool import extract as extract_mod
from fim.fimfs.vfs import Attr, Filesystem, fs_error

from .manifest import DWARFS, MANIFEST_NAMES, compare, image_path, load, view_dir

FIM = Path(sys.executable).with_name("fim")
DEFAULT = DWARFS / "native" / "default.dwarfs"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="restoring owners and devices needs root")


def extracted_mismatches(root: Path, manifest: list[dict]) -> list[str]:
    """Differences between the tree extracted at ``root`` and manifest entries.

    Two things a host directory cannot hold are not asked for: a mode on a symlink
    (Linux symlinks are always 0777; unixlink's are 0555), and names of one inode
    with different times (the v2.2 layout of DwarFS < 0.5 keeps stat data per name):
    such names are extracted as separate files, so their inode group and nlink go.
    """
    stats: dict[int, set[tuple]] = {}
    for e in manifest:
        if "inode_group" in e:
            stats.setdefault(e["inode_group"], set()).add(
                (e["mode"], e["uid"], e["gid"], e["mtime"])
            )
    expected = [
        {
            k: v
            for k, v in e.items()
            if not (k == "mode" and e["type"] == "symlink")
            and not (k in ("inode_group", "nlink") and len(stats.get(e.get("inode_group"), ())) > 1)
        }
        for e in manifest
    ]
    return compare(expected, view_dir(root))


# -- real images -----------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("name", MANIFEST_NAMES)
def test_extract_matches_manifest(name: str, tmp_path: Path, capsys) -> None:
    dest = tmp_path / "out"
    assert fim.main(["extract", str(image_path(name)), str(dest)]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("", "")  # no progress bar or chatter when not on a TTY
    assert extracted_mismatches(dest, load(name)) == []
    sparse = dest / "sparse.img"
    if sparse.exists():  # 200 MB with 8 KiB of data: written with holes
        assert sparse.stat().st_blocks * 512 < 4 << 20


@needs_root
def test_extract_console_script(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    run = subprocess.run(
        [str(FIM), "extract", str(DEFAULT), str(dest)], capture_output=True, text=True, timeout=600
    )
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    assert extracted_mismatches(dest, load("default")) == []


def test_future_features_refused(tmp_path: Path, capsys) -> None:
    code = fim.main(["extract", str(DWARFS / "future-features.dwarfs"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("fim: ")
    assert "this-feature-will-never-exist" in err


def test_existing_entries_are_not_overwritten(tmp_path: Path, capsys) -> None:
    image = DWARFS / "timestamps.dwarfs"
    assert fim.main(["extract", str(image), str(tmp_path)]) == 0
    (tmp_path / "file_1w2s3lb6").chmod(0o644)
    (tmp_path / "file_1w2s3lb6").write_bytes(b"mine")
    assert fim.main(["extract", str(image), str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "File exists" in err
    assert (tmp_path / "file_1w2s3lb6").read_bytes() == b"mine"


@needs_root
def test_extract_one_path(tmp_path: Path) -> None:
    manifest = load("default")
    assert fim.main(["extract", str(DEFAULT), str(tmp_path / "links"), "--path", "links"]) == 0
    part = [
        {**e, "path": e["path"].removeprefix("/links") or "/"}
        for e in manifest
        if e["path"] == "/links" or e["path"].startswith("/links/")
    ]
    # hard-a has 3 names in the image, all of them under /links
    assert extracted_mismatches(tmp_path / "links", part) == []

    assert (
        fim.main(["extract", str(DEFAULT), str(tmp_path / "one"), "--path", "/links/rel-link"]) == 0
    )
    assert os.readlink(tmp_path / "one" / "rel-link") == "hard-a"


def test_missing_path(tmp_path: Path, capsys) -> None:
    assert fim.main(["extract", str(DEFAULT), str(tmp_path), "--path", "/nope"]) == 1
    assert capsys.readouterr().err == "fim: /nope: No such file or directory\n"


# -- a Filesystem double ---------------------------------------------------------------
# Hostile names, loops and read errors cannot be produced with the native tools
# available here (mkdwarfs only packs what a real directory holds), so these tests
# feed extract_tree a Filesystem double that serves whatever a hostile image could.


def _attr(kind: int, perm: int, ino: int, size: int = 0, nlink: int = 1, rdev: int = 0) -> Attr:
    t = 1_600_000_000_123_456_789 + ino
    return Attr(kind | perm, nlink, 1234, 5678, size, t, t, t, rdev, ino)


class TreeFS(Filesystem):
    """{path: (attr, payload)}; payload: names (dir), bytes (file) or target (symlink)."""

    def __init__(self, entries: dict[str, tuple[Attr, object]]) -> None:
        self.entries = entries

    def _get(self, path: str) -> tuple[Attr, object]:
        if path not in self.entries:
            raise fs_error(errno.ENOENT, path)
        return self.entries[path]

    def getattr(self, path: str) -> Attr:
        return self._get(path)[0]

    def readdir(self, path: str) -> list[str]:
        return list(self._get(path)[1])  # type: ignore[call-overload]

    def readlink(self, path: str) -> str:
        return self._get(path)[1]  # type: ignore[return-value]

    def open(self, path: str, flags: int) -> int:
        self._get(path)
        return 7

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self._get(path)[1][offset : offset + size]  # type: ignore[index]


def d(ino: int, names: list[str], perm: int = 0o755) -> tuple[Attr, object]:
    return _attr(stat.S_IFDIR, perm, ino, nlink=2), names


def f(ino: int, data: bytes, perm: int = 0o644, nlink: int = 1) -> tuple[Attr, object]:
    return _attr(stat.S_IFREG, perm, ino, size=len(data), nlink=nlink), data


def ln(ino: int, target: str, nlink: int = 1) -> tuple[Attr, object]:
    return _attr(stat.S_IFLNK, 0o777, ino, size=len(target), nlink=nlink), target


def snapshot(top: Path) -> set[str]:
    paths = set()
    for dirpath, dirnames, filenames in os.walk(top):
        paths.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return paths


@pytest.fixture
def sandbox(tmp_path: Path):
    """(dest, outside, check): ``check()`` asserts nothing was created outside dest."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    before = snapshot(tmp_path)

    def check() -> None:
        new = snapshot(tmp_path) - before
        inside = str(dest) + os.sep
        assert [p for p in new if p != str(dest) and not p.startswith(inside)] == []
        assert list(outside.iterdir()) == []

    return dest, outside, check


@pytest.mark.parametrize("bad", ["..", ".", "", "a/b", "../escape", "/abs", "x\0y", "../../.."])
@pytest.mark.parametrize("nested", [False, True])
def test_hostile_names(bad: str, nested: bool, sandbox) -> None:
    dest, outside, check = sandbox
    parent = "/sub" if nested else "/"
    bad_path = f"{parent.rstrip('/')}/{bad}"
    fs = TreeFS(
        {
            "/": d(1, ["sub"] if nested else ["ok", bad]),
            "/sub": d(2, ["ok", bad]),
            f"{parent.rstrip('/')}/ok": f(3, b"fine"),
            "/escape": f(5, b"pwned"),
        }
    )
    fs.entries.setdefault(bad_path, f(4, b"pwned"))  # what a hostile reader serves for it
    with pytest.raises(FimError, match="unsafe name"):
        extract_tree(fs, str(dest))
    check()


def test_planted_symlinks_are_not_followed(sandbox) -> None:
    dest, outside, check = sandbox
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    (dest / "file").symlink_to(outside / "file")
    (dest / "sock").symlink_to(outside / "sock")
    for tree in (
        {"/": d(1, ["sub"]), "/sub": d(2, ["pwned"]), "/sub/pwned": f(3, b"x")},
        {"/": d(1, ["file"]), "/file": f(3, b"x")},
        {"/": d(1, ["sock"]), "/sock": (_attr(stat.S_IFSOCK, 0o755, 3), None)},
    ):
        with pytest.raises(FimError, match="File exists"):
            extract_tree(TreeFS(tree), str(dest))
    check()


class FlipFS(TreeFS):
    """Serves /link first as a symlink to outside, then as a directory (a hostile reader)."""

    def __init__(self, outside: Path) -> None:
        super().__init__(
            {"/": d(1, ["link", "link"]), "/link": ln(2, str(outside)), "/link/pwned": f(3, b"x")}
        )
        self.lookups = 0

    def getattr(self, path: str) -> Attr:
        if path == "/link":
            self.lookups += 1
            if self.lookups == 2:
                self.entries["/link"] = d(4, ["pwned"])
        return super().getattr(path)


def test_symlink_then_directory_with_the_same_name(sandbox) -> None:
    dest, outside, check = sandbox
    with pytest.raises(FimError, match="File exists"):
        extract_tree(FlipFS(outside), str(dest))
    check()
    assert os.readlink(dest / "link") == str(outside)


def test_hard_link_to_an_outside_symlink_links_the_symlink(sandbox) -> None:
    dest, outside, check = sandbox
    target = str(outside / "target")
    fs = TreeFS({"/": d(1, ["s", "h"]), "/s": ln(7, target, nlink=2), "/h": ln(7, target, nlink=2)})
    extract_tree(fs, str(dest))
    check()
    assert os.readlink(dest / "h") == target
    assert os.lstat(dest / "h").st_ino == os.lstat(dest / "s").st_ino


def test_directory_loop_refused(sandbox) -> None:
    dest, _, check = sandbox
    fs = TreeFS({"/": d(1, ["a"]), "/a": d(2, ["b"]), "/a/b": d(1, ["a"])})
    with pytest.raises(FimError, match="loop"):
        extract_tree(fs, str(dest))
    check()


def test_nul_in_symlink_target_refused(sandbox) -> None:
    dest, _, check = sandbox
    with pytest.raises(FimError, match="NUL"):
        extract_tree(TreeFS({"/": d(1, ["s"]), "/s": ln(2, "a\0b")}), str(dest))
    check()


@needs_root
def test_metadata_is_restored(tmp_path: Path) -> None:
    sparse = bytes(3 << 20) + b"data" + bytes(5 << 20)
    fs = TreeFS(
        {
            "/": d(1, ["ro", "suid", "sgid", "sticky", "fifo", "null", "loop", "sock", "sparse"]),
            "/ro": d(2, ["f"], perm=0o500),
            "/ro/f": f(3, b"inside a read-only dir", perm=0o400),
            "/suid": f(4, b"#!/bin/sh\n", perm=0o4755),
            "/sgid": d(5, [], perm=0o2750),
            "/sticky": d(6, [], perm=0o1777),
            "/fifo": (_attr(stat.S_IFIFO, 0o640, 7), None),
            "/null": (_attr(stat.S_IFCHR, 0o666, 8, rdev=os.makedev(1, 3)), None),
            "/loop": (_attr(stat.S_IFBLK, 0o660, 9, rdev=os.makedev(7, 9)), None),
            "/sock": (_attr(stat.S_IFSOCK, 0o755, 10), None),
            "/sparse": f(11, sparse),
        }
    )
    dest = tmp_path / "dest"
    stats = extract_tree(fs, str(dest))
    assert (stats.dirs, stats.files, stats.specials, stats.skipped) == (3, 3, 4, [])
    for path, (attr, _) in fs.entries.items():
        st = os.lstat(str(dest) + path)
        assert (st.st_mode, st.st_uid, st.st_gid) == (attr.mode, 1234, 5678), path
        assert st.st_mtime_ns == attr.mtime_ns, path
        assert st.st_rdev == attr.rdev or not attr.rdev, path
    assert (dest / "ro" / "f").read_bytes() == b"inside a read-only dir"
    assert (dest / "sparse").read_bytes() == sparse
    assert (dest / "sparse").stat().st_blocks * 512 <= 256 << 10


def test_read_error_names_the_path(tmp_path: Path, monkeypatch, capsys) -> None:
    class BrokenFS(TreeFS):
        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            raise fs_error(errno.EIO, path)

    fs = BrokenFS({"/": d(1, ["dir"]), "/dir": d(2, ["broken"]), "/dir/broken": f(3, b"x" * 10)})
    monkeypatch.setattr(extract_mod, "open_dwarfs", lambda args: fs)
    assert fim.main(["extract", "image.dwarfs", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == "fim: /dir/broken: read error: Input/output error\n"


SPECIAL_BITS = {"suid": 0o4755, "sgid": 0o2755, "both": 0o6711, "sticky": 0o1644,
                "dir-sgid": 0o2775, "dir-sticky": 0o1777}


def _as_user(uid: int, gid: int, argv: list[str]) -> int:
    """`fim ARGV` in a child process that became ``uid``/``gid`` for real (setuid; the
    interpreter of the tests may live where the user cannot execute it)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            code = fim.main(argv)
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@needs_root
@pytest.mark.parametrize("who", ["root", "user"])
def test_set_id_bits_only_for_root(who: str) -> None:
    """`fim extract` run for real by a normal user (issue 20 item 9): the files become
    that user's, so set-user-ID and set-group-ID bits go (and sticky on files), as GNU
    tar does; root restores owners and keeps every bit."""
    import shutil
    import tempfile

    from tests.containers import ensure_user

    work = Path(tempfile.mkdtemp(prefix="fim-extract-", dir="/tmp"))
    try:
        src = work / "src"
        src.mkdir()
        for name, mode in SPECIAL_BITS.items():
            path = src / name
            if name.startswith("dir"):
                path.mkdir()
            else:
                path.write_text("#!/bin/sh\nid -u\n")
            os.chmod(path, mode)
        image = work / "layer.dwarfs"
        assert fim.main(["create", str(src), str(image)]) == 0
        os.chmod(work, 0o755)
        os.chmod(image, 0o644)
        dest = work / "out"
        if who == "user":
            entry = ensure_user()
            os.chown(work, entry.pw_uid, entry.pw_gid)
            assert _as_user(entry.pw_uid, entry.pw_gid, ["extract", str(image), str(dest)]) == 0
        else:
            assert fim.main(["extract", str(image), str(dest)]) == 0
        for name, mode in SPECIAL_BITS.items():
            st = os.lstat(dest / name)
            if who == "root":
                assert (stat.S_IMODE(st.st_mode), st.st_uid) == (mode, 0), name
                continue
            kept = mode & ~(stat.S_ISUID | stat.S_ISGID)
            if not name.startswith("dir"):
                kept &= ~stat.S_ISVTX
            assert (stat.S_IMODE(st.st_mode), st.st_uid) == (kept, entry.pw_uid), name
    finally:
        shutil.rmtree(work)
