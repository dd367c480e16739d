"""Scanning a source directory for the writer: entries, attributes, hard links.

Names are bytes as the OS gives them. Every regular-file inode of the host
(``st_dev``, ``st_ino``) becomes one :class:`FileData` shared by all its links,
so hard links stay one inode in the image; other file types are never merged
(DwarFS has link counts for regular files only). Children are sorted byte-wise,
which is the order the image stores them in.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import FimfsError


class SourceError(FimfsError):
    """The source tree cannot be read, or changed while it was read."""


@dataclass(slots=True, eq=False)
class FileData:
    """One regular-file inode of the source (shared by its hard links)."""

    path: bytes  # of the first link found: where the data is read from
    size: int
    dev: int
    ino: int
    mtime_ns: int
    sparse: bool  # fewer blocks allocated than the size needs: look for holes
    links: int = 0
    digest: bytes | None = None  # content hash, computed only when the size is not unique


@dataclass(slots=True, eq=False)
class Node:
    """One directory entry of the source tree."""

    name: bytes
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0
    children: list[Node] | None = None  # directories, sorted by name
    target: bytes | None = None  # symlinks
    data: FileData | None = None  # regular files


@dataclass(slots=True)
class Tree:
    root: Node
    files: list[FileData] = field(default_factory=list)  # in pre-order of first link
    entries: int = 1


def _node(name: bytes, st: os.stat_result) -> Node:
    return Node(name, st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns,
                st.st_ctime_ns, st.st_rdev if stat.S_ISCHR(st.st_mode) or
                stat.S_ISBLK(st.st_mode) else 0)


def fail(path: bytes, e: OSError, what: str = "cannot read") -> SourceError:
    """The one-line error for an OSError on a source path."""
    return SourceError(f"{what} {os.fsdecode(path)}: {e.strerror or e}")


def _children(path: bytes, skip: frozenset[tuple[int, int]]) -> list[tuple[bytes, os.stat_result]]:
    out = []
    try:
        with os.scandir(path) as it:
            for de in it:
                p = de.path
                try:
                    st = de.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # vanished between listing and stat: as if never there
                except OSError as e:
                    raise fail(p, e) from None
                if (st.st_dev, st.st_ino) not in skip:
                    out.append((de.name, st))
    except OSError as e:
        raise fail(path, e, "cannot read directory") from None
    out.sort(key=lambda t: t[0])
    return out


def scan(source: str | bytes | os.PathLike, skip: frozenset[tuple[int, int]] = frozenset(),
         progress: Callable[[int], None] | None = None) -> Tree:
    """Read the tree under ``source``; ``skip`` names (dev, ino) pairs to leave out
    (the output file being written into the source tree, for one)."""
    top = os.fsencode(source)
    try:
        st = os.stat(top)
    except OSError as e:
        raise fail(top, e) from None
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{os.fsdecode(top)}: not a directory")
    root = _node(b"", st)
    root.children = []
    tree = Tree(root)
    by_inode: dict[tuple[int, int], FileData] = {}
    stack = [(top, root)]
    while stack:
        path, node = stack.pop()
        subdirs = []
        for name, st in _children(path, skip):
            child = _node(name, st)
            p = os.path.join(path, name)
            fmt = stat.S_IFMT(st.st_mode)
            if fmt == stat.S_IFDIR:
                child.children = []
                subdirs.append((p, child))
            elif fmt == stat.S_IFLNK:
                try:
                    child.target = os.readlink(p)
                except OSError as e:
                    raise fail(p, e) from None
            elif fmt == stat.S_IFREG:
                key = (st.st_dev, st.st_ino)
                data = by_inode.get(key)
                if data is None:
                    data = FileData(p, st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns,
                                    st.st_blocks * 512 < st.st_size)
                    by_inode[key] = data
                data.links += 1
                child.data = data
            node.children.append(child)  # type: ignore[union-attr]  # a directory node: children is a list
            tree.entries += 1
        stack.extend(reversed(subdirs))
        if progress:
            progress(tree.entries)
    tree.files = list({id(n.data): n.data for n in preorder(root) if n.data}.values())
    return tree


def preorder(root: Node) -> Iterator[Node]:
    """Every node, parents before children, children in name order."""
    stack = [root]
    while stack:
        n = stack.pop()
        yield n
        if n.children:
            stack.extend(reversed(n.children))
