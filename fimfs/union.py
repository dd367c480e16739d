"""Union: a copy-on-write union of one writable upper and N read-only lower layers.

Semantics follow overlayfs (on-disk formats, and their writers, in :mod:`fimfs.whiteout`;
which layers provide a path, and the caches, in :mod:`fimfs.unionresolve`; copy-up in
:mod:`fimfs.copyup`): the topmost
layer wins; a directory present in several layers is merged until a layer where it
is opaque; a non-directory or a whiteout hides everything below it. Changes go to
the upper: a lower entry is copied up on its first write or metadata change (content,
owner, xattrs, mode, then times; parents first, with their own attributes), built
under a temporary name in its upper directory and renamed into place, so readers see
either the lower entry or the complete copy.

Where fim differs from overlayfs, deliberately:

* renaming a directory never fails with EXDEV: its merged tree is copied up, moved,
  and made opaque where the lowers have something under the new name;
* a user cannot create a ``.wh.*`` name (EPERM) nor a character device 0:0 (EPERM):
  both would be read as whiteouts.

Two changes are not atomic to concurrent readers: between removing an upper directory
(rmdir) or moving a name away (rename) and writing the whiteout that replaces it, a
reader may glimpse the lower entry of that name.

Like overlayfs without ``index=on``: copying up one name of a lower hard link breaks the
link (the copy keeps the inode number, so both names then show the same number); a
file opened read-only before its copy-up keeps reading the lower content.

Inode numbers are assigned per (layer, inode of that layer), so they are unique across
layers and equal for hard links; copy-up and rename carry a path's number along. The
root is 0 (the FUSE adapter adds 1). Merged directories report nlink 1, as overlayfs.

Caching: lower layers never change, so their directory listings (and what they say
about whiteouts and opacity) are cached, and so is the resolution of each path (which
layers provide it). Resolutions are invalidated by every change made through the
union; the upper's attributes are always read live. Entries created or deleted in the
upper directory behind the union's back, while it is in use, may be missed (overlayfs
leaves that undefined too).

Locking: one re-entrant lock serialises namespace changes (create, copy-up, unlink,
rename, whiteouts, metadata changes). Lookups, getattr, readdir, open and read/write
of open files take no lock: a file handle encodes its layer, so read() goes straight
to the layer that opened it.

The union owns its layers: :meth:`close` closes them.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from . import whiteout as wh
from .copyup import CopyUp
from .paths import empty_dir, join, split_parent
from .unionresolve import UPPER, Node, shown_attr
from .vfs import RENAME_NOREPLACE, Attr, Filesystem, Spans, StatFs, fs_error

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC


class Union(CopyUp):
    """``lowers[0]`` is the topmost lower layer (overlayfs' lowerdir order); no upper: read-only.

    Built on UnionResolver (fimfs.unionresolve: resolution and caches) and CopyUp
    (fimfs.copyup); this class is the Filesystem: the read side, and the changes."""

    # -- read side -------------------------------------------------------------------
    def getattr(self, path: str) -> Attr:
        node, path = self._existing(path)
        if node.attr is not None:
            return node.attr
        a = self._upper.getattr(path)
        if wh.is_whiteout(a):  # deleted a moment ago
            raise fs_error(errno.ENOENT, path)
        return shown_attr(a, node.dirs, self._ino_for(UPPER, a.ino))

    def readdir_attrs(self, path: str) -> list[tuple[str, Attr]]:
        """A directory that one lower layer alone provides (most of a container's tree)
        is listed from that layer's own readdir_attrs, and its entries' resolutions are
        cached on the way (each would otherwise be probed and stat'ed by name); merged
        and upper directories go name by name."""
        node, path = self._existing(path)
        if len(node.dirs) != 1 or node.dirs[0] < self._first_lower:
            return super().readdir_attrs(path)
        i, gen, base = node.dirs[0], self._gen, path.rstrip("/")
        out: list[tuple[str, Attr]] = []
        found: dict[str, Node | None] = {}
        for name, a in self._layers[i].readdir_attrs(path):
            if name.startswith(wh.PREFIX) or wh.is_whiteout(a):
                continue  # hides nothing: no layer below takes part in this directory
            dirs, ino = (i,) if a.is_dir else (), self._ino_for(i, a.ino)
            shown = shown_attr(a, dirs, ino)
            found[f"{base}/{name}"] = Node(i, dirs, shown, ino)
            out.append((name, shown))
        self._store(found, gen)
        return out

    def readdir(self, path: str) -> list[str]:
        node, path = self._existing(path)
        if not node.dirs:
            raise fs_error(errno.ENOTDIR, path)
        if len(node.dirs) == 1:
            return list(self._listing(node.dirs[0], path)[0])
        out: list[str] = []
        seen: set[str] = set()
        hidden: set[str] = set()
        for i in node.dirs:
            shown, whited = self._listing(i, path)
            for name in shown:
                if name not in seen and name not in hidden:
                    seen.add(name)
                    out.append(name)
            hidden.update(whited)
        # In name order, as each DwarFS layer lists its own: a program going through the
        # tree then meets every layer's files in that layer's order (lookahead.py).
        out.sort()
        return out

    def readlink(self, path: str) -> str:
        node, path = self._existing(path)
        return self._layers[node.layer].readlink(path)

    def open(self, path: str, flags: int) -> int:
        if flags & _WRITE_FLAGS:
            upper = self._writable()
            with self._lock:
                node, path = self._existing(path)
                if node.dirs:
                    raise fs_error(errno.EISDIR, path)
                self._copy_up(path, node, 0 if flags & os.O_TRUNC else None)
            return upper.open(path, flags) * self._n + UPPER
        node, path = self._existing(path)
        try:
            return self._layers[node.layer].open(path, flags) * self._n + node.layer
        except OSError as e:
            # Only a whiteout gives ENXIO (FUSE never opens devices): deleted a moment ago.
            if e.errno == errno.ENXIO and node.layer < self._first_lower:
                raise fs_error(errno.ENOENT, path) from None
            raise

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        inner, i = divmod(fh, self._n)
        return self._layers[i].read(path, size, offset, inner)

    def read_spans(self, path: str, size: int, offset: int, fh: int) -> Spans:
        inner, i = divmod(fh, self._n)
        return self._layers[i].read_spans(path, size, offset, inner)

    def unchanging(self, fh: int) -> bool:
        inner, i = divmod(fh, self._n)
        return i >= self._first_lower and self._layers[i].unchanging(inner)

    @property
    def handles_need_release(self) -> bool:  # type: ignore[override]
        return any(layer.handles_need_release for layer in self._layers)

    @property
    def flush_reports_errors(self) -> bool:  # type: ignore[override]
        return any(layer.flush_reports_errors for layer in self._layers)

    def release(self, path: str, fh: int) -> None:
        inner, i = divmod(fh, self._n)
        self._layers[i].release(path, inner)

    def statfs(self) -> StatFs:
        return self._layers[0].statfs()

    def getxattr(self, path: str, name: str) -> bytes:
        node, path = self._existing(path)
        if wh.is_private_xattr(name):
            raise fs_error(errno.EOPNOTSUPP, path)
        return self._layers[node.layer].getxattr(path, name)

    def listxattr(self, path: str) -> list[str]:
        node, path = self._existing(path)
        names = self._layers[node.layer].listxattr(path)
        return [n for n in names if not wh.is_private_xattr(n)]


    # -- upper helpers (with the whiteout writers of fimfs.whiteout) -------------------
    def _place(self, path: str, make: Callable[[str], None], is_dir: bool = False) -> None:
        """Create a new upper entry at the free name ``path`` with ``make``. A whiteout
        there is replaced by a rename over it, so the hidden entry never shows (only a
        directory over a device whiteout needs the device removed first). A directory
        made over a whiteout is opaque, so nothing of the deleted one comes back."""
        upper = self._upper
        parent = split_parent(path)[0]
        self._ensure_upper_dir(parent)
        existing = self._upper_attr(path)  # None, or a whiteout (the name is free)
        marker = self._upper_attr(join(parent, wh.PREFIX + split_parent(path)[1]))
        if existing is None and (marker is None or not is_dir):
            make(path)
        else:
            tmp = wh.temp_name(parent)
            make(tmp)
            try:
                if is_dir:
                    wh.set_opaque(upper, tmp)
                    if existing is not None:
                        upper.unlink(path)  # a directory cannot be renamed over a device
                upper.rename(tmp, path)
            except BaseException:
                wh.discard(upper, tmp)
                raise
        if marker is not None:
            wh.drop_file_whiteout(upper, path)
        self._forget(path)

    def _drop_ino(self, a: Attr) -> None:
        """Forget the number of an upper inode that is gone (its number may be reused)."""
        if a.is_dir or a.nlink <= 1:
            with self._ino_lock:
                self._inos.pop((UPPER, a.ino), None)

    # -- write side ------------------------------------------------------------------
    @property
    def writable(self) -> bool:
        return self.upper is not None

    def create(self, path: str, mode: int, flags: int) -> int:
        upper = self._writable()
        with self._lock:
            node, path = self._lookup(path)
            if node is None:
                path = self._free_name(path)
                fhs: list[int] = []

                def make(p: str) -> None:
                    fhs.append(upper.create(p, mode, flags | os.O_CREAT | os.O_EXCL))

                try:
                    self._place(path, make)
                except BaseException:
                    for fh in fhs:
                        upper.release(path, fh)
                    raise
                return fhs[0] * self._n + UPPER
            if flags & os.O_EXCL:
                raise fs_error(errno.EEXIST, path)
        return self.open(path, flags & ~os.O_CREAT)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        inner, i = divmod(fh, self._n)
        if i >= self._first_lower:
            raise fs_error(errno.EBADF, path)
        return self._layers[i].write(path, data, offset, inner)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        upper = self._writable()
        if fh is not None:
            inner, i = divmod(fh, self._n)
            if i < self._first_lower:
                upper.truncate(path, length, inner)
                return
        with self._lock:
            node, path = self._existing(path)
            if node.dirs:
                raise fs_error(errno.EISDIR, path)
            self._copy_up(path, node, length)
            upper.truncate(path, length)

    def flush(self, path: str, fh: int) -> None:
        inner, i = divmod(fh, self._n)
        self._layers[i].flush(path, inner)

    def fsync(self, path: str, datasync: bool, fh: int) -> None:
        inner, i = divmod(fh, self._n)
        self._layers[i].fsync(path, datasync, inner)

    def mkdir(self, path: str, mode: int) -> None:
        upper = self._writable()
        with self._lock:
            path = self._free_name(path)
            self._place(path, lambda p: upper.mkdir(p, mode), is_dir=True)

    def mknod(self, path: str, mode: int, rdev: int) -> None:
        upper = self._writable()
        if stat.S_ISCHR(mode) and rdev == 0:
            raise fs_error(errno.EPERM, path)  # that is a whiteout
        with self._lock:
            path = self._free_name(path)
            self._place(path, lambda p: upper.mknod(p, mode, rdev))

    def symlink(self, target: str, path: str) -> None:
        upper = self._writable()
        with self._lock:
            path = self._free_name(path)
            self._place(path, lambda p: upper.symlink(target, p))

    def link(self, existing: str, path: str) -> None:
        upper = self._writable()
        with self._lock:
            node, existing = self._existing(existing)
            if node.dirs:
                raise fs_error(errno.EPERM, existing)
            path = self._free_name(path)
            self._copy_up(existing, node)
            self._place(path, lambda p: upper.link(existing, p))

    def unlink(self, path: str) -> None:
        upper = self._writable()
        with self._lock:
            node, path = self._existing(path)
            if node.dirs:
                raise fs_error(errno.EISDIR, path)
            if node.layer < self._first_lower:
                a = upper.getattr(path)
                if self._lower_has(path):
                    wh.write_whiteout(upper, path, replace=True)
                else:
                    upper.unlink(path)
                self._drop_ino(a)
            else:
                self._ensure_upper_dir(split_parent(path)[0])
                wh.write_whiteout(upper, path)
            self._forget(path)

    def rmdir(self, path: str) -> None:
        upper = self._writable()
        with self._lock:
            node, path = self._existing(path)
            if path == "/":
                raise fs_error(errno.EBUSY, path)
            if not node.dirs:
                raise fs_error(errno.ENOTDIR, path)
            if self.readdir(path):
                raise fs_error(errno.ENOTEMPTY, path)
            lower = self._lower_has(path)
            if node.layer < self._first_lower:
                a = upper.getattr(path)
                empty_dir(upper, path)
                upper.rmdir(path)
                self._drop_ino(a)
                if lower:
                    wh.write_whiteout(upper, path)
            else:
                self._ensure_upper_dir(split_parent(path)[0])
                wh.write_whiteout(upper, path)
            self._forget(path)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """In three steps, each its own method: (1) all of ``old`` into the upper, (2) the
        move there, over whatever the upper has at ``new``, (3) hide the lowers' ``old``.
        ``flags``: RENAME_NOREPLACE, checked under the lock (atomic)."""
        if flags & ~RENAME_NOREPLACE:
            raise fs_error(errno.EINVAL, old)
        upper = self._writable()
        with self._lock:
            onode, old = self._existing(old)
            nnode, new = self._lookup(new)
            if flags and nnode is not None:
                raise fs_error(errno.EEXIST, new)
            if not self._rename_allowed(onode, old, nnode, new):
                return
            self._rename_copy_up(upper, onode, old, new)
            self._rename_move(upper, onode, old, new)
            self._rename_hide_old(upper, onode, old, new)
            if onode.dirs:
                self._forget_all()  # every path below both names
            else:
                self._forget(old, new)

    def _rename_allowed(self, onode: Node, old: str, nnode: Node | None, new: str) -> bool:
        """The checks of rename(2): an OSError, or False when there is nothing to do."""
        if old == new:
            return False
        if "/" in (old, new):
            raise fs_error(errno.EBUSY, "/")
        if split_parent(new)[1].startswith(wh.PREFIX):
            raise fs_error(errno.EPERM, new)
        if onode.dirs and new.startswith(old + "/"):
            raise fs_error(errno.EINVAL, new)  # into itself
        if nnode is not None:
            if self._same_inode(onode, old, nnode, new):
                return False  # two links of one file: POSIX says do nothing
            if onode.dirs and not nnode.dirs:
                raise fs_error(errno.ENOTDIR, new)
            if not onode.dirs and nnode.dirs:
                raise fs_error(errno.EISDIR, new)
            if nnode.dirs and self.readdir(new):
                raise fs_error(errno.ENOTEMPTY, new)
        return True

    def _rename_copy_up(self, upper: Filesystem, onode: Node, old: str, new: str) -> None:
        """1. all of old in the upper (opaque if the lowers have something under the new
        name, so nothing of that shows through at any moment); the parent of new too."""
        if onode.dirs:
            self._copy_up_tree(old)
            if self._lower_has(new):
                wh.set_opaque(upper, old)
        else:
            self._copy_up(old, onode)
        self._ensure_upper_dir(split_parent(new)[0])

    def _rename_move(self, upper: Filesystem, onode: Node, old: str, new: str) -> None:
        """2. free the name new in the upper, and move old there."""
        replaced = self._upper_attr(new)
        if replaced is not None and replaced.is_dir:
            empty_dir(upper, new)  # only hidden entries: then the host rename replaces it
        elif replaced is not None and onode.dirs:
            upper.unlink(new)  # a whiteout; a directory cannot be renamed over it
            replaced = None
        upper.rename(old, new)
        if replaced is not None and not wh.is_whiteout(replaced):
            self._drop_ino(replaced)

    def _rename_hide_old(self, upper: Filesystem, onode: Node, old: str, new: str) -> None:
        """3. hide what the lowers have under the old name; drop whiteouts made stale."""
        if self._lower_has(old):
            wh.write_whiteout(upper, old)
        wh.drop_file_whiteout(upper, new)
        if onode.dirs:
            wh.drop_stale_whiteouts(upper, new)

    def _same_inode(self, a: Node, a_path: str, b: Node, b_path: str) -> bool:
        if a.layer != b.layer:
            return False
        if a.attr is not None and b.attr is not None:
            return a.attr.ino == b.attr.ino
        upper = self._upper
        return upper.getattr(a_path).ino == upper.getattr(b_path).ino

    def _change(self, path: str, apply: Callable[[Filesystem, str], None]) -> None:
        """A metadata change: copy up, then ``apply(upper, path)``."""
        upper = self._writable()
        with self._lock:
            node, path = self._existing(path)
            self._copy_up(path, node)
            apply(upper, path)

    def chmod(self, path: str, mode: int) -> None:
        self._change(path, lambda up, p: up.chmod(p, mode))

    def chown(self, path: str, uid: int, gid: int) -> None:
        self._change(path, lambda up, p: up.chown(p, uid, gid))

    def utimens(self, path: str, atime_ns: int, mtime_ns: int) -> None:
        self._change(path, lambda up, p: up.utimens(p, atime_ns, mtime_ns))

    def setxattr(self, path: str, name: str, value: bytes, flags: int) -> None:
        if wh.is_private_xattr(name):
            self._writable()
            raise fs_error(errno.EOPNOTSUPP, path)
        self._change(path, lambda up, p: up.setxattr(p, name, value, flags))

    def removexattr(self, path: str, name: str) -> None:
        if wh.is_private_xattr(name):
            self._writable()
            raise fs_error(errno.EOPNOTSUPP, path)
        self._change(path, lambda up, p: up.removexattr(p, name))

    def close(self) -> None:
        for layer in self._layers:
            layer.close()
