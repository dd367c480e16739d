"""Keeping the kernel's view of an inode coherent across its names, for writable mounts.

libfuse's path-based API gives every name its own kernel inode. When one file has
several names, hard links or (under casefold) several spellings, a change made
through one name leaves the kernel serving the other names' cached attributes and
pages until their timeout: a read through the other name can even stop at the old
size. :class:`Aliases` remembers which paths the kernel has seen for each inode
and, after a change through one of them, asks libfuse to invalidate the others.

Invalidation is synchronous, before the changing request is answered, so the next
system call through another name already sees the change. That is safe: it only
drops the caches of the *other* names' kernel inodes (libfuse's inval_inode, never
inval_entry, which would need the parent directory's lock that a create, unlink
or rename request holds), never of the inode the current request has locked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Aliases:
    def __init__(self, invalidate: Callable[[str], None]) -> None:
        self._invalidate = invalidate
        self._lock = threading.Lock()
        self._ino: dict[str, int] = {}
        self._paths: dict[int, set[str]] = {}

    def seen(self, path: str, ino: int) -> None:
        """The kernel now knows ``path`` as inode ``ino``."""
        if self._ino.get(path) == ino:  # the common case, without the lock (atomic get)
            return
        with self._lock:
            old = self._ino.get(path)
            if old == ino:
                return
            if old is not None:
                self._drop(path, old)
            self._ino[path] = ino
            self._paths.setdefault(ino, set()).add(path)

    def changed(self, path: str, itself: bool = False) -> None:
        """Something of the inode named ``path`` changed: invalidate its other names, and
        ``path`` too when the kernel cannot know (its nlink after a link). Never ``itself``
        from a request that may hold the inode's pages locked (a write)."""
        ino = self._ino.get(path)
        if ino is None:
            return
        with self._lock:
            others = [p for p in self._paths.get(ino, ()) if itself or p != path]
        for p in others:
            try:
                self._invalidate(p)
            except Exception:  # noqa: BLE001 - best effort: the attr timeout still expires
                log.debug("cannot invalidate %r", p, exc_info=True)

    def forget(self, path: str) -> None:
        """``path`` no longer names its inode (unlinked, or renamed away)."""
        with self._lock:
            ino = self._ino.pop(path, None)
            if ino is not None:
                self._drop(path, ino)

    def _drop(self, path: str, ino: int) -> None:
        names = self._paths.get(ino)
        if names is not None:
            names.discard(path)
            if not names:
                del self._paths[ino]
