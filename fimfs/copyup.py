"""Copy-up: making the upper's copy of lower entries, as the union does before a change.

:func:`copy_entry` builds the copy of one entry under a temporary name; :class:`CopyUp`,
the union's part, renames it into place (so readers see either the lower entry or the
complete copy), keeps its inode number, and copies the parents first, or a whole tree.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

from . import whiteout as wh
from .paths import join, read_chunks, split_parent
from .unionresolve import UPPER, Node, UnionResolver
from .vfs import Attr, Filesystem, fs_error, split_path

log = logging.getLogger("fim.fimfs.union")

#: Bytes copied per read during copy-up; an all-zero chunk is skipped (left as a hole).
COPY_CHUNK = 1 << 20
_ZEROS = bytes(COPY_CHUNK)


def copy_entry(src: Filesystem, upper: Filesystem, path: str, tmp: str, a: Attr,
               size: int) -> None:
    """Make ``tmp`` in the upper a copy of ``src``'s ``path`` (whose attributes are ``a``),
    of the same type, with the first ``size`` bytes of a regular file's content."""
    if a.is_dir:
        upper.mkdir(tmp, 0o700)
    elif a.is_reg:
        copy_data(src, upper, path, tmp, size)
    elif a.is_lnk:
        upper.symlink(src.readlink(path), tmp)
    else:
        upper.mknod(tmp, stat.S_IFMT(a.mode) | 0o600, a.rdev)
    copy_meta(src, upper, path, tmp, a)


def copy_data(src: Filesystem, upper: Filesystem, path: str, tmp: str, size: int) -> None:
    """Copy ``size`` bytes of ``path`` into a new upper file; zero chunks stay holes."""
    ufh = upper.create(tmp, 0o600, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        if size:
            sfh = src.open(path, os.O_RDONLY)
            try:
                off = 0
                for chunk in read_chunks(src, path, sfh, size, COPY_CHUNK):
                    if chunk != (_ZEROS if len(chunk) == COPY_CHUNK else bytes(len(chunk))):
                        data, pos = chunk, off
                        while data:  # a short write is rare but allowed
                            n = upper.write(tmp, data, pos, ufh)
                            data, pos = data[n:], pos + n
                    off += len(chunk)
            finally:
                src.release(path, sfh)
        upper.truncate(tmp, size, ufh)  # the length, holes at the end included
    finally:
        upper.release(tmp, ufh)


def copy_meta(src: Filesystem, upper: Filesystem, path: str, tmp: str, a: Attr) -> None:
    """Owner, xattrs, mode, times: in this order (chown clears set-id bits and
    capabilities; a non-root owner needs write permission to set user xattrs)."""
    try:
        upper.chown(tmp, a.uid, a.gid)
    except PermissionError:
        log.debug("copy-up of %s: cannot keep owner %d:%d", path, a.uid, a.gid)
    for name in src.listxattr(path):
        if wh.is_private_xattr(name):
            continue
        try:
            upper.setxattr(tmp, name, src.getxattr(path, name), 0)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EACCES, errno.EOPNOTSUPP):
                raise
            log.debug("copy-up of %s: cannot keep xattr %s: %s", path, name, e.strerror)
    if not a.is_lnk:
        upper.chmod(tmp, stat.S_IMODE(a.mode))
    upper.utimens(tmp, a.atime_ns, a.mtime_ns)


class CopyUp(UnionResolver):
    """The copy-up of a union (fimfs.union.Union): lower entries made the upper's before
    a change, parents first, each built under a temporary name and renamed into place."""

    def _writable(self) -> Filesystem:
        if self.upper is None:
            raise fs_error(errno.EROFS)
        return self.upper

    def _copy_up(self, path: str, node: Node, limit: int | None = None) -> None:
        """Make sure the upper has ``path`` (and its parents); ``limit``: bytes of content."""
        if node.layer < self._first_lower:
            return
        cur = "/"
        for name in split_path(path)[:-1]:
            cur = join(cur, name)
            parent, _ = self._lookup(cur)
            if parent is not None and parent.layer >= self._first_lower:
                self._copy_up_one(cur, parent, None)
        self._copy_up_one(path, node, limit)

    def _ensure_upper_dir(self, path: str) -> None:
        node, path = self._existing(path)
        self._copy_up(path, node)

    def _copy_up_one(self, path: str, node: Node, limit: int | None) -> None:
        upper = self._upper
        src = self._layers[node.layer]
        a = node.attr
        assert a is not None
        parent = split_parent(path)[0]
        parent_attr = upper.getattr(parent)
        tmp = wh.temp_name(parent)
        key = None
        try:
            copy_entry(src, upper, path, tmp, a, a.size if limit is None else min(limit, a.size))
            key = (UPPER, upper.getattr(tmp).ino)
            with self._ino_lock:
                self._inos[key] = node.ino  # before it shows: the path keeps its number
            upper.rename(tmp, path)
        except BaseException:
            if key is not None:
                with self._ino_lock:
                    self._inos.pop(key, None)
            wh.discard(upper, tmp)
            raise
        # Overlayfs too leaves the parent's times as they were: a copy-up is no change.
        upper.utimens(parent, parent_attr.atime_ns, parent_attr.mtime_ns)
        self._forget(path)

    def _copy_up_tree(self, path: str) -> None:
        """Copy a directory and everything the lowers show under it into the upper."""
        stack = [path]
        while stack:
            cur = stack.pop()
            node, _ = self._existing(cur)
            self._copy_up(cur, node)
            node, _ = self._existing(cur)
            if len(node.dirs) < 2:
                continue  # nothing below the upper
            for name in self.readdir(cur):  # the union's merged listing
                child = join(cur, name)
                cnode, _ = self._existing(child)
                if cnode.dirs:
                    stack.append(child)
                else:
                    self._copy_up(child, cnode)
