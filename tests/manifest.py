"""The test images of ../shared/testdata/dwarfs and their manifests, and views to compare.

A *view* is a list of manifest-shaped entries (see testdata/README.md) built from
what a reader shows: through the Filesystem API, or through a directory on the
host (a FUSE mount or an extracted tree), so every path is held to one manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from fim.fimfs.vfs import Filesystem

TESTDATA = Path(os.environ.get("FIM_TESTDATA",
                               Path(__file__).resolve().parents[2] / "shared" / "testdata"))
DWARFS = TESTDATA / "dwarfs"
BAD_IMAGES = sorted((DWARFS / "bad").glob("*.dwarfs"))
MANIFEST_NAMES = sorted(p.stem for p in (DWARFS / "manifests").glob("*.json"))
_TYPES = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink",
          stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo",
          stat.S_IFSOCK: "socket"}


def image_path(name: str) -> Path:
    for p in (DWARFS / f"{name}.dwarfs", DWARFS / "native" / f"{name}.dwarfs",
              DWARFS / "compat" / f"{name}.dwarfs"):
        if p.exists():
            return p
    raise FileNotFoundError(name)


def load(name: str) -> list[dict]:
    return json.loads((DWARFS / "manifests" / f"{name}.json").read_text())


def _entry(path: str, st: os.stat_result | object, digest: str | None,
           target: str | None) -> dict:
    mode = st.st_mode if hasattr(st, "st_mode") else st.mode
    d = {"path": path, "type": _TYPES[stat.S_IFMT(mode)], "mode": oct(stat.S_IMODE(mode)),
         "uid": _a(st, "uid"), "gid": _a(st, "gid"), "mtime": _a(st, "mtime_ns") // 10**9,
         "_ino": _a(st, "ino")}
    if not stat.S_ISDIR(mode):
        d["nlink"] = _a(st, "nlink")
    if stat.S_ISREG(mode):
        d["size"] = _a(st, "size")
        d["sha256"] = digest
    if target is not None:
        d["target"] = target
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        d["rdev_major"], d["rdev_minor"] = os.major(_a(st, "rdev")), os.minor(_a(st, "rdev"))
    return d


def _a(st: object, name: str) -> int:
    return getattr(st, "st_" + name) if hasattr(st, "st_mode") else getattr(st, name)


def view_fs(fs: Filesystem) -> list[dict]:
    """Walk a Filesystem through its public API only."""
    out = []
    stack = ["/"]
    while stack:
        path = stack.pop()
        a = fs.getattr(path)
        digest = target = None
        if a.is_reg:
            h = hashlib.sha256()
            fh = fs.open(path, os.O_RDONLY)
            off = 0
            while chunk := fs.read(path, 1 << 20, off, fh):
                h.update(chunk)
                off += len(chunk)
            fs.release(path, fh)
            digest = h.hexdigest()
        elif a.is_lnk:
            target = fs.readlink(path)
        out.append(_entry(path, a, digest, target))
        if a.is_dir:
            base = path.rstrip("/")
            stack.extend(f"{base}/{n}" for n in fs.readdir(path))
    return out


def view_dir(root: Path) -> list[dict]:
    """Walk a host directory (a mount or an extracted tree) without following links."""
    out = []
    root_b = os.fsencode(root)
    stack = [b""]
    while stack:
        rel = stack.pop()
        full = root_b + rel
        st = os.lstat(full)
        digest = target = None
        if stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(full, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            digest = h.hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            target = os.fsdecode(os.readlink(full))
        out.append(_entry(os.fsdecode(rel) or "/", st, digest, target))
        if stat.S_ISDIR(st.st_mode):
            stack.extend(rel + b"/" + n for n in os.listdir(full))
    return out


def manifest_of_dir(root: Path) -> list[dict]:
    """A host tree as a manifest (the source of an image): hard links grouped by inode."""
    out = []
    for e in view_dir(root):
        ino = e.pop("_ino")
        if e["type"] == "file" and e["nlink"] > 1:
            e["inode_group"] = ino
        out.append(e)
    return out


def compare(expected: list[dict], got: list[dict], *, inodes: bool = True) -> list[str]:
    """Differences between a manifest and a view, field by field ([] = equal).

    Hard links: names sharing an ``inode_group`` must share one inode number and
    names in different groups must not."""
    diffs = []
    by_path = {d["path"]: d for d in got}
    if len(by_path) != len(expected):
        extra = sorted(set(by_path) - {d["path"] for d in expected})
        diffs.append(f"{len(by_path)} entries instead of {len(expected)}; extra: {extra[:5]}")
    group_ino: dict[int, int] = {}
    for want in expected:
        have = by_path.get(want["path"])
        if have is None:
            diffs.append(f"{want['path']}: missing")
            continue
        for key, value in want.items():
            if key == "inode_group":
                if inodes and group_ino.setdefault(value, have["_ino"]) != have["_ino"]:
                    diffs.append(f"{want['path']}: not the same inode as its hard links")
            elif have.get(key) != value:
                diffs.append(f"{want['path']}: {key} is {have.get(key)!r}, expected {value!r}")
    if inodes and len(set(group_ino.values())) != len(group_ino):
        diffs.append("different hard-link groups share an inode")
    return diffs
