"""OwnerView: present every inode as owned by one user, as ``dwarfs -o uid=,gid=`` does.

Why: an unprivileged caller runs the container in a one-uid user namespace, and the
mount is served with ``default_permissions``, so the kernel checks modes against the
owners the filesystem reports. Files the layers store as root's would show up as
``nobody`` inside, and root-inside could not change /etc. Presenting everything as
the caller's (the host ids that the namespace maps to root, or to the inside user)
makes the kernel's checks agree with what the container sees. The stored (logical)
owners stay below the view: a HostDir with ``owner_xattr=True`` keeps them for
``fim-layer commit`` and for a host root that opens the same stack without the view.

Chown through the view: the kernel sends host ids, and the only id a process inside
the one-uid namespace can name is the caller's host id, which stands for the inside
identity. So a chown to ``uid``/``gid`` (the presented ids) is passed down as a chown
to ``inside``; any other id is passed as is; -1 ("unchanged", which the view accepts
itself, see ``chown_accepts_unchanged``) keeps the stored id.

Everything else, capability flags included, is the inner filesystem's (a
:class:`fimfs.wrapper.Wrapper`). The view keeps no state, so it is as thread safe as
the filesystem below.
"""

from __future__ import annotations

from .vfs import Attr, Filesystem
from .wrapper import Wrapper


class OwnerView(Wrapper):
    """``inner`` with every uid/gid shown as ``uid``/``gid``; chowns to them mean ``inside``."""

    #: The FUSE adapter passes -1 on: filled in from getattr it would be the presented
    #: id, which this view would turn into ``inside`` instead of "unchanged".
    chown_accepts_unchanged = True

    def __init__(self, inner: Filesystem, uid: int, gid: int,
                 inside: tuple[int, int] | None = None) -> None:
        """``inside``: the stored identity that the presented ids stand for in a chown
        (None: the presented ids themselves, i.e. chowns pass through unchanged)."""
        super().__init__(inner)
        self.uid, self.gid = uid, gid
        self.inside = (uid, gid) if inside is None else inside

    def _show(self, a: Attr) -> Attr:
        if a.uid == self.uid and a.gid == self.gid:
            return a
        # The constructor, not dataclasses.replace: a third of the cost, on a hot path.
        return Attr(a.mode, a.nlink, self.uid, self.gid, a.size, a.atime_ns, a.mtime_ns,
                    a.ctime_ns, a.rdev, a.ino, a.blocks)

    # -- read side ---------------------------------------------------------------------
    def getattr(self, path: str) -> Attr:
        return self._show(self.inner.getattr(path))

    def readdir_attrs(self, path: str) -> list[tuple[str, Attr]]:
        show = self._show
        return [(name, show(a)) for name, a in self.inner.readdir_attrs(path)]

    # -- write side --------------------------------------------------------------------
    def chown(self, path: str, uid: int, gid: int) -> None:
        """Presented ids become ``inside``; -1 keeps the stored id (the inner layers get
        real ids, the vfs convention)."""
        if uid == -1 or gid == -1:
            cur = self.inner.getattr(path)
            uid = cur.uid if uid == -1 else self._inside_uid(uid)
            gid = cur.gid if gid == -1 else self._inside_gid(gid)
        else:
            uid, gid = self._inside_uid(uid), self._inside_gid(gid)
        self.inner.chown(path, uid, gid)

    def _inside_uid(self, uid: int) -> int:
        return self.inside[0] if uid == self.uid else uid

    def _inside_gid(self, gid: int) -> int:
        return self.inside[1] if gid == self.gid else gid
