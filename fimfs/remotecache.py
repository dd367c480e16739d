"""The on-disk chunk cache of remote files (fimfs.remote): per user, shared by every
image and process of the user, bounded, least recently used out first; and the
identity of each URL as last seen, what an offline run reads."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator

from fim.osutil import files

TYPE_CHECKING = False  # not typing's: `fim` and the boot import fimfs.remote for is_url
if TYPE_CHECKING:
    import logging

#: Default bound of the on-disk cache (``FIM_REMOTE_CACHE_SIZE`` overrides it).
DEFAULT_CACHE_BYTES = 4 << 30
#: How stale a chunk's time may be before a read refreshes it (LRU order).
_TOUCH_AFTER = 60.0


def _log() -> logging.Logger:
    import logging

    return logging.getLogger("fim.fimfs.remote")


def key_of(text: str) -> str:
    """The name a URL (with its identity) is filed under."""
    import hashlib

    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/fim/remote`` (``~/.cache/fim/remote``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fim", "remote")


def default_cache_bytes() -> int:
    value = os.environ.get("FIM_REMOTE_CACHE_SIZE", "")
    return int(value) if value.isdigit() else DEFAULT_CACHE_BYTES


class Cache:
    """Chunks of remote files on disk: ``files/<key>/<index>``, written atomically
    (temporary name, then rename), so two processes can share it; and ``urls/<hash>``,
    the identity of each URL as last seen (what an offline run reads)."""

    def __init__(self, directory: str | None = None, limit: int | None = None) -> None:
        self.directory = directory or default_cache_dir()
        self.limit = default_cache_bytes() if limit is None else limit
        self._added = 0
        self._lock = threading.Lock()
        try:
            os.makedirs(os.path.join(self.directory, "files"), 0o700, exist_ok=True)
            os.makedirs(os.path.join(self.directory, "urls"), 0o700, exist_ok=True)
        except OSError as exc:  # reads still work, from the network every time
            _log().warning("no block cache in %s: %s", self.directory, exc.strerror or exc)

    def _chunk(self, key: str, index: int) -> str:
        return os.path.join(self.directory, "files", key, f"{index:x}")

    def get(self, key: str, index: int) -> bytes | None:
        path = self._chunk(key, index)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            data = os.pread(fd, st.st_size, 0)
            if time.time() - st.st_mtime > _TOUCH_AFTER:
                os.utime(fd)
            return data
        except OSError:
            return None
        finally:
            os.close(fd)

    def holds(self, key: str, count: int) -> bool:
        """Are chunks ``0..count-1`` of ``key`` all cached?"""
        return all(os.path.exists(self._chunk(key, i)) for i in range(count))

    def put(self, key: str, index: int, data: bytes) -> None:
        """Store one chunk; a full disk or a read-only cache only costs the caching."""
        path = self._chunk(key, index)
        try:
            os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
            files.write_atomic(path, data)
        except OSError as exc:
            _log().debug("cannot cache %s: %s", path, exc)
            return
        with self._lock:
            self._added += len(data)
            due = self._added > self.limit // 16
            if due:
                self._added = 0
        if due:
            self.trim()

    def trim(self) -> None:
        """Remove the least recently used chunks until the cache is within 90% of its
        bound. One process trims at a time; the others skip it."""
        try:
            lock = os.open(os.path.join(self.directory, "lock"),
                           os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock)
            return
        try:
            chunks = list(self._chunks())
            total = sum(size for _, size, _ in chunks)
            if total <= self.limit:
                return
            chunks.sort(key=lambda c: c[2])
            for path, size, _ in chunks:
                if total <= self.limit * 9 // 10:
                    break
                try:
                    os.unlink(path)
                    total -= size
                except OSError:
                    pass
        finally:
            os.close(lock)

    def _chunks(self) -> Iterator[tuple[str, int, float]]:
        files = os.path.join(self.directory, "files")
        try:
            entries = list(os.scandir(files))
        except OSError:
            return
        for entry in entries:
            try:
                inner = list(os.scandir(entry.path))
            except OSError:
                continue
            if not inner:
                try:
                    os.rmdir(entry.path)
                except OSError:
                    pass
            for chunk in inner:
                try:
                    st = chunk.stat(follow_symlinks=False)
                except OSError:
                    continue
                yield chunk.path, st.st_size, st.st_mtime

    def remember(self, url: str, identity: dict[str, object]) -> None:
        path = os.path.join(self.directory, "urls", key_of(url))
        import json

        with contextlib.suppress(OSError):
            files.write_atomic(path, json.dumps({"url": url, **identity}).encode())

    def recall(self, url: str) -> dict[str, object] | None:
        import json

        try:
            with open(os.path.join(self.directory, "urls", key_of(url)), encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) and doc.get("url") == url else None
