"""Copy-up: making the upper's copy of one lower entry, as the union does before a change.

:func:`copy_entry` builds the copy under a temporary name; the union then renames it
into place (so readers see either the lower entry or the complete copy), keeps its
inode number and handles the parents (see :meth:`fimfs.union.Union._copy_up`).
"""

from __future__ import annotations

import errno
import logging
import os
import stat

from . import whiteout as wh
from .paths import read_chunks
from .vfs import Attr, Filesystem

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
