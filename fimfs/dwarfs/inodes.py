"""The inode reader of a DwarFS image (native dwarfs' ``inode_reader``): paths to
entries (with a lookup cache), a file's chunks mapped to the block cache's bytes, and
what to have decompressed ahead: the next blocks of a sequential reader, and what the
next files in tree order need (lookahead) for a program going through the tree."""

from __future__ import annotations

import errno
import logging
import os
import threading
from bisect import bisect_right
from itertools import accumulate

from ..vfs import Spans, fs_error, split_path
from .blockcache import BlockCache
from .lookahead import TreeOrder
from .metadata import CORRUPTION, Metadata

log = logging.getLogger(__name__)

#: Files whose chunk lists are kept (a file opened again needs no metadata walk).
CHUNK_LISTS = 4096
#: How far a read may start from where the previous reads of its file ended and still
#: count as sequential (a few of the kernel's 1 MiB read-ahead requests).
SEQUENTIAL_SLACK = 8 << 20
#: Paths whose entry is remembered (FUSE asks by path, several times per file).
PATHS = 1 << 16
_ODD = ("", ".", "..")  # last components a path lookup from its parent leaves to split_path
#: Chunks of a file looked at for the blocks to decompress ahead of a sequential reader.
_AHEAD_CHUNKS = 256


class OpenFile:
    """A regular file being read: its chunks with their start offsets in the file, and
    where its previous read ended."""

    __slots__ = ("chunks", "next_offset", "size", "starts")

    def __init__(self, starts: list[int], chunks: list[tuple[int, int, int]], size: int) -> None:
        self.starts = starts
        self.chunks = chunks  # (block or -1 for a hole, offset in block, length)
        self.size = size
        self.next_offset = 0  # sequential-read detection


class InodeReader:
    """Lookups and file reads over ``meta``, the data coming from ``cache``."""

    def __init__(self, meta: Metadata, cache: BlockCache, path: str) -> None:
        self.meta = meta
        self.cache = cache
        self.path = path
        self.paths: dict[str, int] = {}
        self.files: dict[int, OpenFile] = {}
        self.order: TreeOrder | None = None  # built in the background at the first need
        self.order_started = False
        self._lock = threading.Lock()

    # -- lookups ----------------------------------------------------------------------
    def entry(self, path: str) -> int:
        """The directory entry of ``path`` (ENOENT, ENOTDIR)."""
        e = self.paths.get(path)
        if e is not None:
            return e
        m = self.meta
        parent, _, name = path.rpartition("/")
        pe = self._parent_entry(parent, name) if path[:1] == "/" else None
        if pe is not None:
            ino = m.ent_inode[pe]
            if ino >= m.dir_count:
                raise fs_error(errno.ENOTDIR, path)
            e = m.find(ino, os.fsencode(name))
            if e is None:
                raise fs_error(errno.ENOENT, path)
        else:
            try:
                e = m.lookup([os.fsencode(p) for p in split_path(path)])
            except KeyError:
                raise fs_error(errno.ENOENT, path) from None
            except NotADirectoryError:
                raise fs_error(errno.ENOTDIR, path) from None
        if len(self.paths) >= PATHS:
            self.paths.clear()  # a plain dict: each get and set is atomic under the GIL
        self.paths[path] = e
        return e

    def _parent_entry(self, parent: str, name: str) -> int | None:
        """The entry of ``parent`` if it was looked up already (a program lists a
        directory, or opens one of its files, before the others): a child is then one
        search in it, where a lookup from the root costs one per component. Only for a
        plain last component, and a parent not ending in "/": cached paths are valid
        ones, so the parent is then canonical."""
        if name in _ODD or parent[-1:] == "/":
            return None
        return self.paths.get(parent) if parent else 0

    def file_ino(self, entry: int, path: str) -> int:
        """The inode of ``entry``, a regular file (EISDIR or EINVAL if it is not one)."""
        m = self.meta
        ino = m.ent_inode[entry]
        if not m.file_inode_offset <= ino < m.device_inode_offset:
            raise fs_error(errno.EISDIR if ino < m.dir_count else errno.EINVAL, path)
        return ino

    def file_of(self, ino: int) -> OpenFile:
        """The chunk list of regular file ``ino`` (kept in a bounded dict)."""
        f = self.files.get(ino)
        if f is None:
            m = self.meta
            chunks = list(m.file_chunks(m.chunk_index(ino)))
            starts = [0, *accumulate(n for _, _, n in chunks)]
            f = OpenFile(starts, chunks, starts[-1])
            if len(self.files) >= CHUNK_LISTS:
                self.files.clear()  # a plain dict: each get and set is atomic under the GIL
            self.files[ino] = f
        return f

    # -- file data ----------------------------------------------------------------------
    def spans(self, h: OpenFile, size: int, offset: int, path: str) -> Spans:
        """The bytes of ``h`` in [offset, offset + size) as spans of cached blocks; a
        sequential reader gets the next blocks decompressed ahead."""
        end = min(offset + size, h.size)
        if offset >= end:
            return []
        # The kernel's read-ahead sends several requests at once, served by different
        # threads in any order: "sequential" is near where the reads got to, not equal.
        sequential = abs(offset - h.next_offset) <= SEQUENTIAL_SLACK
        h.next_offset = max(h.next_offset, end) if sequential else end
        i = bisect_right(h.starts, offset) - 1
        cache = self.cache
        parts: Spans = []
        pos = offset
        while pos < end:
            block, boff, length = h.chunks[i]
            start = h.starts[i]
            lo, hi = pos - start, min(end - start, length)
            if block < 0:
                parts.append((bytes(hi - lo), 0, hi - lo))
            else:
                data = cache.data(block, boff + hi, path)
                if boff + hi > len(data):
                    log.error("%s: chunk beyond the end of block %d", path, block)
                    raise fs_error(errno.EIO, path)
                parts.append((data, boff + lo, boff + hi))
            pos = start + hi
            i += 1
        if sequential:
            cache.prefetch(cache.missing(h.chunks[i:i + _AHEAD_CHUNKS]))
        return parts

    def ahead_of(self, ino: int) -> None:
        """A read at the start of file ``ino``: a program going through a tree reads the
        next files soon, so decompress what they need ahead, and read the blocks of the
        files after them (nothing if this read does not continue a pass; and a program
        that opens many files without reading them gets nothing). TreeOrder decides;
        nothing until it is built, in the background, at the first call."""
        order = self.order
        if order is not None:
            needs, reads = order.needs_after(ino)
            self.cache.prefetch(needs)
            self.cache.read_ahead(reads)
            return
        with self._lock:
            started, self.order_started = self.order_started, True
        if not started:
            try:
                self.cache.submit(self._build_order)
            except RuntimeError:  # closed
                pass

    def _build_order(self) -> None:
        try:
            self.order = TreeOrder(self.meta)
        except CORRUPTION as e:  # the metadata was validated: this is not expected
            log.warning("%s: no read-ahead in tree order: %s", self.path, e)
