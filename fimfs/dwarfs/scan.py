"""Scanning a source directory for the writer: entries, attributes, hard links.

Names are bytes as the OS gives them. Every regular-file inode of the host
(``st_dev``, ``st_ino``) becomes one :class:`FileData` shared by all its links,
so hard links stay one inode in the image; other file types are never merged
(DwarFS has link counts for regular files only). Children are sorted byte-wise,
which is the order the image stores them in.

Two options serve `fim-layer`: ``keep(path, st)`` leaves out the entries it refuses
(`create`'s input set), and ``upper=True`` reads an overlay upper directory as the
union sees it (:mod:`fimfs.whiteout`, :mod:`fimfs.hostdir`), so the image is the
layer the container saw: logical owners (``user.fim.owner``, never stored itself)
and modes replace the real ones, ``.wh.NAME`` whiteouts become 0:0 character devices named
NAME, opaque directories (xattr) get a ``.wh..wh..opq`` entry (DwarFS has no
xattrs), and the union's temporary entries and other AUFS meta names are left out.
"""


from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .. import hostdir, whiteout
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


def _node(name: bytes, st: os.stat_result,
          logical: tuple[int, int, int] | None = None) -> Node:
    """``logical``: owner and permission bits to store instead of the real ones."""
    uid, gid, perm = logical if logical else (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    return Node(name, stat.S_IFMT(st.st_mode) | perm, uid, gid, st.st_atime_ns, st.st_mtime_ns,
                st.st_ctime_ns, st.st_rdev if stat.S_ISCHR(st.st_mode) or
                stat.S_ISBLK(st.st_mode) else 0)


def fail(path: bytes, e: OSError, what: str = "cannot read") -> SourceError:
    """The one-line error for an OSError on a source path."""
    return SourceError(f"{what} {os.fsdecode(path)}: {e.strerror or e}")


def _children(path: bytes, skip: frozenset[tuple[int, int]],
              keep: Keep | None = None) -> list[tuple[bytes, os.stat_result]]:
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
                if (st.st_dev, st.st_ino) not in skip and (keep is None or keep(p, st)):
                    out.append((de.name, st))
    except OSError as e:
        raise fail(path, e, "cannot read directory") from None
    out.sort(key=lambda t: t[0])
    return out


#: ``keep(path, st)``: whether an entry of the source goes into the image.
Keep = Callable[[bytes, os.stat_result], bool]
_WH = whiteout.PREFIX.encode()
_WH_META = (whiteout.PREFIX * 2).encode()  # .wh..wh.*: AUFS meta names, the union's temps
_MARKER = whiteout.OPAQUE_MARKER.encode()


def _opaque(path: bytes) -> bool:
    for name in whiteout.OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass  # ENODATA, or no xattrs here
    return False


def _upper_entries(path: bytes, entries: list[tuple[bytes, os.stat_result]],
                   dir_st: os.stat_result) -> list[tuple[bytes, os.stat_result]]:
    """``entries`` of the upper directory ``path`` as a layer stores them (module doc)."""
    names = {name for name, _ in entries}
    out = []
    for name, st in entries:
        if name == _MARKER:
            out.append((name, st))
        elif name.startswith(_WH_META):
            continue
        elif name.startswith(_WH):
            hidden = name[len(_WH):]
            if hidden and hidden not in names:  # else stale: the entry is there again
                out.append((hidden, _whiteout_stat(st)))
        else:
            out.append((name, st))
    if _MARKER not in names and _opaque(path):
        out.append((_MARKER, _marker_stat(dir_st)))
    out.sort(key=lambda t: t[0])
    return out


def _whiteout_stat(st: os.stat_result) -> os.stat_result:
    """The 0:0 character device (mode 0, as overlayfs makes them) for a ``.wh.`` file."""
    fields = list(st)
    fields[stat.ST_MODE] = stat.S_IFCHR
    fields[stat.ST_SIZE] = 0
    return _with_ns(fields, st, rdev=0)


def _marker_stat(dir_st: os.stat_result) -> os.stat_result:
    """An empty regular file for the opaque marker of a directory (its times, owner)."""
    fields = list(dir_st)
    fields[stat.ST_MODE] = stat.S_IFREG | 0o600
    fields[stat.ST_SIZE] = fields[stat.ST_NLINK] = 0
    fields[stat.ST_INO] = -1  # no host inode: never merged with another file
    return _with_ns(fields, dir_st, rdev=0, blocks=0)


def _with_ns(fields: list[float], st: os.stat_result, **extra: int) -> os.stat_result:
    return os.stat_result(fields, {"st_atime_ns": st.st_atime_ns, "st_mtime_ns": st.st_mtime_ns,
                                   "st_ctime_ns": st.st_ctime_ns, "st_rdev": st.st_rdev,
                                   "st_blocks": st.st_blocks, **{f"st_{k}": v for k, v in
                                                                 extra.items()}})


def scan(source: str | bytes | os.PathLike, skip: frozenset[tuple[int, int]] = frozenset(),
         progress: Callable[[int], None] | None = None, *, keep: Keep | None = None,
         upper: bool = False) -> Tree:
    """Read the tree under ``source``; ``skip`` names (dev, ino) pairs to leave out
    (the output file being written into the source tree, for one); ``keep`` and
    ``upper``: see the module docstring."""
    top = os.fsencode(source)
    try:
        st = os.stat(top)
    except OSError as e:
        raise fail(top, e) from None
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{os.fsdecode(top)}: not a directory")
    recorded_by = hostdir.recorders(st) if upper else None
    root = _node(b"", st, None if recorded_by is None else
                 hostdir.logical(top, st, recorded_by))
    root.children = []
    tree = Tree(root)
    by_inode: dict[tuple[int, int], FileData] = {}
    stack = [(top, root, st)]
    while stack:
        path, node, dir_st = stack.pop()
        subdirs = []
        entries = _children(path, skip, keep)
        if upper:
            entries = _upper_entries(path, entries, dir_st)
        for name, st in entries:
            p = os.path.join(path, name)
            child = _node(name, st, None if recorded_by is None else
                          hostdir.logical(p, st, recorded_by))
            fmt = stat.S_IFMT(st.st_mode)
            if fmt == stat.S_IFDIR:
                child.children = []
                subdirs.append((p, child, st))
            elif fmt == stat.S_IFLNK:
                try:
                    child.target = os.readlink(p)
                except OSError as e:
                    raise fail(p, e) from None
            elif fmt == stat.S_IFREG:
                key = (st.st_dev, st.st_ino if st.st_ino >= 0 else -len(by_inode) - 1)
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
