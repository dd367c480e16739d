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
"""

from __future__ import annotations

import stat

from .vfs import Attr

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
