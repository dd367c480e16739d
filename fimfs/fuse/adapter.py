"""The operations adapter: one mfusepy operations object over any :class:`fimfs.vfs.Filesystem`.

The adapter keeps no state of its own beyond directory snapshots and the alias table;
the Filesystem implementations are thread-safe, so libfuse runs multithreaded. It
imports neither mfusepy nor libfuse (see :mod:`fimfs.fuse.binding` for those).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any

from fim.fimfs.fuse.aliases import Aliases
from fim.fimfs.fuse.binding import direct_write, path_invalidator
from fim.fimfs.vfs import RENAME_NOREPLACE, Attr, Filesystem, Spans

log = logging.getLogger("fim.fimfs.fuse")

_UNKNOWN_INO = {"st_ino": 0xFFFFFFFF}  # libfuse's FUSE_UNKNOWN_INO


def attr_to_stat(attr: Attr) -> dict[str, int]:
    """The st_* dict mfusepy expects (times in ns, the adapter sets ``use_ns``).

    ``st_ino`` is ``Attr.ino + 1``: layers number from 0 (DwarFS gives the root inode
    0), but 0 means "no inode" to userspace (glibc's readdir skips such entries) and
    the FUSE root is 1. libfuse only passes it on with the ``use_ino`` option.
    """
    return {
        "st_mode": attr.mode,
        "st_nlink": attr.nlink,
        "st_uid": attr.uid,
        "st_gid": attr.gid,
        "st_size": attr.size,
        "st_atime": attr.atime_ns,
        "st_mtime": attr.mtime_ns,
        "st_ctime": attr.ctime_ns,
        "st_rdev": attr.rdev,
        "st_ino": attr.ino + 1,
        "st_blocks": attr.blocks,
    }


class FuseOperations:
    """The mfusepy operations object for one Filesystem.

    Duck-typed instead of subclassing ``mfusepy.Operations`` so that this module can
    be imported (and the adapter unit-tested) without libfuse; mfusepy only looks
    the methods up by name. Errors are raised as ``OSError(errno)``, which is all
    ``mfusepy.FuseOSError`` is; :func:`fimfs.fuse.binding.call` turns them, and any
    other exception, into the errno the kernel gets.
    """

    use_ns = True
    # libfuse 2 drops an update of only one of atime/mtime unless told that utimens
    # understands UTIME_OMIT/UTIME_NOW (libfuse 3 always passes them).
    flag_utime_omit_ok = 1

    def __init__(self, fs: Filesystem, on_ready: Callable[[], None] | None = None) -> None:
        self.fs = fs
        self._on_ready = on_ready
        self._dir_handles = itertools.count(1)
        self._aliases: Aliases | None = None  # writable mounts on libfuse 3 (see init)
        self._listings: dict[int, list[tuple[str, Attr | None]]] = {}
        self._writers: set[int] = set()  # open direct-write handles (see direct_write)
        self._unchecked: set[int] = set()  # of those, the ones whose file may keep privileges
        if not fs.flush_reports_errors:
            self.flush = None  # type: ignore[assignment,method-assign]  # see vfs

    def init_with_config(self, conn: Any, config: Any) -> None:
        """Called by libfuse once the kernel connection is set up: the mount is live.
        ``conn`` is libfuse's ``fuse_conn_info`` (what the kernel can do)."""
        if self.fs.writable:
            invalidate = path_invalidator()
            if invalidate is not None:
                self._aliases = Aliases(invalidate)
        if self._on_ready is not None:
            try:
                self._on_ready()
            except Exception:
                log.exception("fuse init: readiness callback failed")

    # -- read side ---------------------------------------------------------
    def stat(self, path: str) -> Attr:
        """A path's attributes (the binding copies them into libfuse's struct stat)."""
        attr = self.fs.getattr(path)
        if self._aliases is not None:
            self._aliases.seen(path, attr.ino)
        return attr

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        """mfusepy's form of :meth:`stat`."""
        return attr_to_stat(self.stat(path))

    def _changed(self, path: str | None, forget: bool = False, itself: bool = False) -> None:
        """A change through ``path``: refresh the kernel's view of the inode's other names."""
        if self._aliases is not None and path is not None:
            self._aliases.changed(path, itself)
            if forget:
                self._aliases.forget(path)

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        # Materialised here so that an error while listing is caught by the guard.
        # Plain names would reach libfuse with st_ino 0, which under use_ino becomes
        # d_ino 0, an entry glibc's readdir silently skips; "unknown" is what libfuse
        # reports without use_ino.
        return [(name, _UNKNOWN_INO, 0) for name in (".", "..", *self.fs.readdir(path))]

    def opendir(self, path: str) -> int:
        return next(self._dir_handles)

    def releasedir(self, path: str | None, fh: int) -> int:
        self._listings.pop(fh, None)
        return 0

    def listing(self, path: str, fh: int, offset: int, plus: bool
                ) -> list[tuple[str, Attr | None]]:
        """The snapshot of a directory that one open handle pages through (libfuse 3).

        Taken at offset 0 (opendir or rewinddir) and kept until releasedir, so names
        never repeat or vanish between pages while the directory changes."""
        entries = self._listings.get(fh) if offset else None
        if entries is None:
            entries = self._listings[fh] = self._snapshot(path, plus)
        return entries

    def _snapshot(self, path: str, plus: bool) -> list[tuple[str, Attr | None]]:
        """A directory's entries, "." and ".." first. For READDIRPLUS they carry full
        attributes, which spares the kernel a LOOKUP per entry; if some entry's
        attributes cannot be had, names alone are listed, so the directory still lists
        and only that entry's own lookup fails."""
        entries: list[tuple[str, Attr | None]] = [(".", None), ("..", None)]
        if plus:
            try:
                found = self.fs.readdir_attrs(path)
                if self._aliases is not None:
                    base = path.rstrip("/")
                    for n, a in found:
                        self._aliases.seen(f"{base}/{n}", a.ino)
                return entries + found
            except Exception as e:  # noqa: BLE001 - the plain listing reports real errors
                log.debug("readdirplus %r: %s; listing names only", path, e)
        return entries + [(name, None) for name in self.fs.readdir(path)]

    def readlink(self, path: str) -> str:
        return self.fs.readlink(path)

    def open(self, path: str, flags: int) -> int:
        fh = self.fs.open(path, flags)
        if direct_write(flags):
            self._writers.add(fh)
            self._unchecked.add(fh)
        return fh

    def unchanging(self, fh: int) -> bool:
        """See :meth:`fimfs.vfs.Filesystem.unchanging` (the binding sets keep_cache)."""
        try:
            return self.fs.unchanging(fh)
        except Exception:  # noqa: BLE001 - only a hint
            return False

    def read(self, path: str, size: int, offset: int, fh: int) -> Spans:
        """The slices the binding's READ copies into the reply (Filesystem.read_spans)."""
        return self.fs.read_spans(path, size, offset, fh)

    def release(self, path: str, fh: int) -> int:
        self._writers.discard(fh)
        self._unchecked.discard(fh)
        self.fs.release(path, fh)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        try:
            st = self.fs.statfs()
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
            # A layer without statfs still lets df and statvfs work.
            return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}
        return {
            "f_bsize": st.bsize,
            "f_frsize": st.frsize,
            "f_blocks": st.blocks,
            "f_bfree": st.bfree,
            "f_bavail": st.bavail,
            "f_files": st.files,
            "f_ffree": st.ffree,
            "f_favail": st.ffree,
            "f_namemax": st.namemax,
        }

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self.fs.getxattr(path, name)

    def listxattr(self, path: str) -> list[str]:
        return list(self.fs.listxattr(path))

    # -- write side ----------------------------------------------------------
    def create(self, path: str, mode: int, flags: int) -> int:
        fh = self.fs.create(path, mode, flags)
        if direct_write(flags):
            self._writers.add(fh)
            # Without O_EXCL the file may have existed, with its own mode and xattrs.
            if not flags & os.O_EXCL or mode & (stat.S_ISUID | stat.S_ISGID):
                self._unchecked.add(fh)
        return fh

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if fh in self._unchecked:
            self._drop_privileges(path)
            self._unchecked.discard(fh)
        n = self.fs.write(path, data, offset, fh)
        self._changed(path)
        return n

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self.fs.truncate(path, length, fh)
        self._changed(path)
        return 0

    def flush(self, path: str, fh: int) -> int:
        self.fs.flush(path, fh)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self.fs.fsync(path, bool(datasync), fh)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        self.fs.mkdir(path, mode)
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        self.fs.mknod(path, mode, dev)
        return 0

    def unlink(self, path: str) -> int:
        self.fs.unlink(path)
        self._changed(path, forget=True)
        return 0

    def rmdir(self, path: str) -> int:
        self.fs.rmdir(path)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        """``flags`` of renameat2: NOREPLACE is honoured (by the Filesystem, atomically),
        anything else (EXCHANGE) is EINVAL."""
        if flags & ~RENAME_NOREPLACE:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if flags:
            self.fs.rename(old, new, flags)
        else:
            self.fs.rename(old, new)  # layers that never see flags may not take them
        self._changed(old, forget=True)
        self._changed(new, forget=True)
        return 0

    def symlink(self, path: str, target: str) -> int:
        # mfusepy passes (new link path, link content); the vfs takes (content, path).
        self.fs.symlink(target, path)
        return 0

    def link(self, path: str, existing: str) -> int:
        # mfusepy passes (new path, existing path); the vfs takes (existing, new).
        self.fs.link(existing, path)
        self._changed(existing, itself=True)  # the kernel keeps its old nlink otherwise
        return 0

    def _drop_privileges(self, path: str) -> None:
        """What the kernel does before a write by an unprivileged process, and leaves to
        the filesystem on a direct write (see :func:`direct_write`): clear set-user-ID,
        set-group-ID with group execute (without it the bit marks mandatory locking),
        and file capabilities. Done for every writer, root included: libfuse does not
        say whether the kernel asked for it (FUSE_WRITE_KILL_SUIDGID)."""
        mode = self.fs.getattr(path).mode
        kill = (mode & stat.S_ISUID) | (stat.S_ISGID if mode & _SGID_EXEC == _SGID_EXEC else 0)
        if kill:
            self.chmod(path, stat.S_IMODE(mode) & ~kill)
        try:
            self.fs.getxattr(path, _CAPABILITY)
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.ENOTSUP):
                return
            raise
        self.removexattr(path, _CAPABILITY)  # refused (EPERM) unless the daemon may: no write

    def _may_gain_privileges(self) -> None:
        """A file got set-ID bits or capabilities: every open direct writer checks again
        at its next write (which file a handle writes is known only then)."""
        self._unchecked.update(self._writers)

    def chmod(self, path: str, mode: int) -> int:
        if mode & (stat.S_ISUID | stat.S_ISGID):
            self._may_gain_privileges()
        self.fs.chmod(path, mode)
        self._changed(path)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        # -1 means "leave unchanged" (chown(2)); the vfs wants real ids.
        if (uid == -1 or gid == -1) and not self.fs.chown_accepts_unchanged:
            cur = self.fs.getattr(path)
            uid = cur.uid if uid == -1 else uid
            gid = cur.gid if gid == -1 else gid
        self.fs.chown(path, uid, gid)
        self._changed(path)
        return 0

    def utimens(self, path: str, times: tuple[int | None, int | None] | None = None) -> int:
        """``times`` None means both now; an element None means "omit" (keep the current value)."""
        if times is None:
            now = time.time_ns()
            self.fs.utimens(path, now, now)
            self._changed(path)
            return 0
        atime, mtime = times
        if atime is None and mtime is None:
            return 0
        if atime is None or mtime is None:
            cur = self.fs.getattr(path)
            atime = cur.atime_ns if atime is None else atime
            mtime = cur.mtime_ns if mtime is None else mtime
        self.fs.utimens(path, atime, mtime)
        self._changed(path)
        return 0

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        if name == _CAPABILITY:
            self._may_gain_privileges()
        self.fs.setxattr(path, name, value, options)
        self._changed(path)
        return 0

    def removexattr(self, path: str, name: str) -> int:
        self.fs.removexattr(path, name)
        self._changed(path)
        return 0


_CAPABILITY = "security.capability"
_SGID_EXEC = stat.S_ISGID | stat.S_IXGRP


#: The operations a read-only mount never needs (the kernel refuses writes on an
#: ``ro`` mount before asking). Left out, mfusepy registers no callback for them and
#: libfuse answers on its own; FLUSH in particular gets ENOSYS, after which the kernel
#: stops sending one at every close: one request less per file read.
WRITE_OPERATIONS = ("create", "write", "truncate", "flush", "fsync", "mkdir", "mknod",
                    "unlink", "rmdir", "rename", "symlink", "link", "chmod", "chown",
                    "utimens", "setxattr", "removexattr")


class ReadOnlyOperations(FuseOperations):
    """The operations object of a read-only Filesystem: no write callbacks at all, no
    directory handles (a listing cannot change: one LRU of listings by path serves every
    page of every reader), and no release callback when the Filesystem's handles need
    none: a plain read of a file then costs Python an OPEN and a READ only, and a READ
    alone where the Filesystem reads by path (no OPEN nor RELEASE reaches libfuse)."""

    opendir = releasedir = None  # type: ignore[assignment]

    def __init__(self, fs: Filesystem, on_ready: Callable[[], None] | None = None) -> None:
        super().__init__(fs, on_ready)
        if not fs.handles_need_release:
            self.release = None  # type: ignore[assignment,method-assign]
        self._by_path: dict[tuple[str, bool], list[tuple[str, Attr | None]]] = {}
        self._no_open = False

    def init_with_config(self, conn: Any, config: Any) -> None:
        # A Filesystem that reads by path needs no OPEN: where the kernel can do
        # without (Linux >= 4.20), the first is answered ENOSYS (see vfs.reads_by_path).
        self._no_open = bool(self.fs.reads_by_path and conn is not None
                             and conn.capable & FUSE_CAP_NO_OPEN_SUPPORT)
        super().init_with_config(conn, config)

    def open(self, path: str, flags: int) -> int:
        if self._no_open:
            raise OSError(errno.ENOSYS, "reads need no open")
        return super().open(path, flags)

    def listing(self, path: str, fh: int, offset: int, plus: bool
                ) -> list[tuple[str, Attr | None]]:
        key = (path, plus)
        entries = self._by_path.get(key) if offset else None
        if entries is None:
            entries = self._snapshot(path, plus)
            if len(self._by_path) >= LISTINGS:
                self._by_path.clear()  # a plain dict: each get and set is atomic under the GIL
            self._by_path[key] = entries
        return entries


#: libfuse 3's conn->capable bit: the kernel takes ENOSYS from OPEN as "never send one".
FUSE_CAP_NO_OPEN_SUPPORT = 1 << 17

#: Directory listings a read-only mount keeps (the next page of a listing is read from it).
LISTINGS = 256


for _name in WRITE_OPERATIONS:
    setattr(ReadOnlyOperations, _name, None)


def operations_for(fs: Filesystem, on_ready: Callable[[], None] | None = None) -> FuseOperations:
    """The operations object that serves ``fs``: read-only ones unless ``fs.writable``."""
    cls = FuseOperations if fs.writable else ReadOnlyOperations
    return cls(fs, on_ready)
