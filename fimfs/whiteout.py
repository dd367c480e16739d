"""The on-disk conventions a union layer uses to delete and to hide, shared with overlayfs.

Read (in the upper and in every lower layer):

* whiteout: a character device 0:0 named like the entry it hides (overlayfs), or an
  entry ``.wh.NAME`` (AUFS, OCI layers, fuse-overlayfs when mknod is not permitted);
* opaque directory: the xattr ``trusted.overlay.opaque`` (or ``user.overlay.opaque``)
  set to ``y`` (overlayfs), or an entry ``.wh..wh..opq`` inside it (AUFS, OCI; the only
  form a DwarFS layer can carry, having no xattrs).

Written by the union: a character device 0:0 (``.wh.NAME`` only where mknod is refused
with EPERM) and the xattr ``trusted.overlay.opaque=y`` (the marker entry where the
xattr cannot be set), so kernel overlayfs and fuse-overlayfs read the upper the same.

Every name starting with ``.wh.`` belongs to these conventions: never shown, never
created by users.

The read-side checks (:func:`is_whiteout`, :func:`xattr_opaque`) work on any layer;
the writers below (:func:`write_whiteout`, :func:`set_opaque`, ...) on the union's
upper layer, which the union calls with its lock held.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat

from .paths import join, remove_tree, split_parent
from .vfs import Attr, Filesystem

log = logging.getLogger(__name__)

PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
OPAQUE_XATTRS = (OPAQUE_XATTR, "user.overlay.opaque")
#: Temporary entries of the union (copy-up in progress): in the reserved AUFS meta
#: namespace, so every tool that knows the conventions hides them and they hide nothing.
TEMP_PREFIX = ".wh..wh..fimtmp."
#: xattrs that describe the union itself; hidden from and refused to users, as overlayfs does.
PRIVATE_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")


def is_whiteout(attr: Attr) -> bool:
    """Whether an entry is an overlayfs whiteout (character device 0:0)."""
    return stat.S_ISCHR(attr.mode) and attr.rdev == 0


def is_private_xattr(name: str) -> bool:
    return name.startswith(PRIVATE_XATTR_PREFIXES)


def xattr_opaque(layer: Filesystem, path: str) -> bool:
    """Whether the directory ``path`` of ``layer`` is opaque by xattr."""
    try:
        names = layer.listxattr(path)
        for name in OPAQUE_XATTRS:
            if name in names and layer.getxattr(path, name) == b"y":
                return True
    except OSError:
        pass  # a layer without xattrs
    return False


# -- writing, in the upper -------------------------------------------------------------


def temp_name(directory: str) -> str:
    """A fresh temporary name in ``directory`` (see :data:`TEMP_PREFIX`)."""
    return join(directory, TEMP_PREFIX + secrets.token_hex(8))


def discard(upper: Filesystem, tmp: str) -> None:
    """Remove a temporary entry (a tree too) if it is there; other failures are logged."""
    try:
        remove_tree(upper, tmp)
    except OSError as e:
        if e.errno != errno.ENOENT:
            log.warning("cannot remove the temporary entry %s: %s", tmp, e.strerror)


def _entry(upper: Filesystem, path: str) -> Attr | None:
    try:
        return upper.getattr(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_whiteout(upper: Filesystem, path: str, replace: bool = False) -> None:
    """Hide the lowers' ``path``; ``replace``: atomically replace the upper file there."""
    target = temp_name(split_parent(path)[0]) if replace else path
    try:
        upper.mknod(target, stat.S_IFCHR, 0)
    except PermissionError as e:
        if e.errno != errno.EPERM:
            raise
        if replace:
            upper.unlink(path)
        parent, name = split_parent(path)
        marker = join(parent, PREFIX + name)
        upper.release(marker, upper.create(marker, 0o600, os.O_WRONLY | os.O_CREAT))
        return
    if replace:
        try:
            upper.rename(target, path)
        except BaseException:
            discard(upper, target)
            raise


def drop_file_whiteout(upper: Filesystem, path: str) -> None:
    """Remove a ``.wh.NAME`` whiteout of ``path`` from the upper, if there is one."""
    parent, name = split_parent(path)
    marker = join(parent, PREFIX + name)
    if _entry(upper, marker) is not None:
        upper.unlink(marker)


def drop_stale_whiteouts(upper: Filesystem, path: str) -> None:
    """Remove the whiteouts in a moved upper tree: nothing is below it any more (it is
    opaque or new to the lowers), and kernel overlayfs lists whiteouts in such
    directories as if they were entries."""
    stack = [path]
    while stack:
        cur = stack.pop()
        for name in upper.readdir(cur):
            child = join(cur, name)
            if name == OPAQUE_MARKER:
                continue
            a = upper.getattr(child)
            if name.startswith(PREFIX) or is_whiteout(a):
                remove_tree(upper, child)
            elif a.is_dir:
                stack.append(child)


def set_opaque(upper: Filesystem, path: str) -> None:
    """Make the upper directory ``path`` opaque: the xattr, else the marker entry."""
    try:
        upper.setxattr(path, OPAQUE_XATTR, b"y", 0)
    except OSError as e:
        log.debug("%s: opaque marker entry instead of the xattr: %s", path, e.strerror)
        marker = join(path, OPAQUE_MARKER)
        upper.release(marker, upper.create(marker, 0o600, os.O_WRONLY | os.O_CREAT))
