"""Path and tree helpers that work on any :class:`fimfs.vfs.Filesystem`.

The one home for them: the layers (union, casefold), the DwarFS metadata and the
`fim` tool all use these, so a path is joined, split and resolved the same way
everywhere. Paths are vfs paths: absolute ``str``, "/" the root.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fim.fimfs.vfs import fs_error

if TYPE_CHECKING:
    from fim.fimfs.vfs import Attr, Filesystem

#: Symlinks followed in one resolution before ELOOP (what Linux allows).
MAX_SYMLINK_HOPS = 40
#: Bytes per read of :func:`read_chunks`: large enough to amortise per-call overhead,
#: small enough to stream.
READ_CHUNK = 1 << 20

_TYPE_NAMES = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def join(parent: str, name: str) -> str:
    """Path of ``name`` inside the directory ``parent``."""
    return parent + name if parent.endswith("/") else f"{parent}/{name}"


def split_parent(path: str) -> tuple[str, str]:
    """``(parent, name)`` of a path; the root's parent is itself with the name ""."""
    parent, _, name = path.rpartition("/")
    return parent or "/", name


def type_name(mode: int) -> str:
    """The file type of ``mode`` in words: dir, file, symlink, char, block, fifo, socket."""
    return _TYPE_NAMES.get(stat.S_IFMT(mode), "unknown")


def resolve(fs: Filesystem, path: str, follow: bool = True) -> tuple[str, Attr]:
    """Resolve symlinks inside ``fs``, component by component, like the kernel.

    Symlinks in the middle of ``path`` are always followed (absolute targets are
    taken relative to the root of ``fs``, ``..`` stops at the root); the last one
    only when ``follow``. Returns the symlink-free path and its Attr. Failures are
    OSError with the errno the kernel would give (ENOENT, ENOTDIR, ELOOP).
    """
    pending = [p for p in path.split("/") if p not in ("", ".")]
    pending.reverse()  # a stack: the next component is at the end
    done: list[str] = []
    attr = fs.getattr("/")
    hops = 0
    while pending:
        if not stat.S_ISDIR(attr.mode):
            raise fs_error(errno.ENOTDIR, path)
        name = pending.pop()
        if name == "..":
            if done:
                done.pop()
            attr = fs.getattr("/" + "/".join(done))
            continue
        current = "/" + "/".join([*done, name])
        attr = fs.getattr(current)
        if stat.S_ISLNK(attr.mode) and (pending or follow):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise fs_error(errno.ELOOP, path)
            target = fs.readlink(current)
            if target.startswith("/"):
                done = []
            pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
            attr = fs.getattr("/" + "/".join(done))
            continue
        done.append(name)
    return "/" + "/".join(done), attr


def read_chunks(fs: Filesystem, path: str, fh: int, size: int,
                chunk: int = READ_CHUNK) -> Iterator[bytes]:
    """The first ``size`` bytes of the open file ``fh``, in reads of up to ``chunk``.

    Stops early, without an error, where the data ends before ``size`` (the caller
    counts what it got); errors of ``read`` propagate as they are.
    """
    offset = 0
    while offset < size:
        data = fs.read(path, min(chunk, size - offset), offset, fh)
        if not data:
            return
        offset += len(data)
        yield data


def remove_tree(fs: Filesystem, path: str) -> None:
    """Remove the entry ``path``; a directory with everything it holds."""
    if fs.getattr(path).is_dir:
        empty_dir(fs, path)
        fs.rmdir(path)
    else:
        fs.unlink(path)


def empty_dir(fs: Filesystem, path: str) -> None:
    """Remove everything the directory ``path`` holds."""
    for name in fs.readdir(path):
        remove_tree(fs, join(path, name))


__all__ = ["MAX_SYMLINK_HOPS", "READ_CHUNK", "empty_dir", "join", "read_chunks", "remove_tree",
           "resolve", "split_parent", "type_name"]
