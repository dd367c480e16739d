"""DwarfsImage: a DwarFS image as a read-only, thread-safe Filesystem.

Opening validates everything small (checksums of schema and metadata, every
consistency rule); file data is decompressed block by block on demand into an LRU
cache bounded in bytes; a sequential reader gets the next blocks prefetched in
background threads (the codecs release the GIL, so that overlaps for real), and a
program going through the tree what its next files need (lookahead).

A zstd block is decompressed only as far as its readers need (zstdstream), as native
dwarfs does: a read waits for its own bytes, not for the whole block, and a block that
only random reads touch is never decoded past the last of them.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
import threading
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from itertools import accumulate
from typing import TYPE_CHECKING

from ..errors import ImageError
from ..lru import SizedLRU
from ..vfs import NO_HANDLE, Attr, Filesystem, Spans, StatFs, fs_error, split_path
from . import codecs, idl, sections, thrift, zstdstream
from .frozen_decode import Decoder, parse_schema
from .lookahead import TreeOrder
from .metadata import Metadata, type_name

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from ..vfs import SpanBuffer

log = logging.getLogger(__name__)

#: The block cache, as native dwarfs' default (``-o cachesize=512m``): on a root of a few
#: hundred MB, every block stays decompressed once touched, whatever order it is read in.
DEFAULT_CACHE_BYTES = 512 << 20
#: Files whose chunk lists are kept (a file opened again needs no metadata walk).
CHUNK_LISTS = 4096
#: How far a read may start from where the previous reads of its file ended and still
#: count as sequential (a few of the kernel's 1 MiB read-ahead requests).
SEQUENTIAL_SLACK = 8 << 20
#: Paths whose entry is remembered (FUSE asks by path, several times per file).
PATHS = 1 << 16
_ODD = ("", ".", "..")  # last components a path lookup from its parent leaves to split_path
#: Blocks decompressed ahead (of a sequential reader, or of the next files in tree
#: order), one worker each. Two beat one on `tar c` of bench/corpus.py's 513 MB on
#: 2 cores (3.32 s against 3.42 s, cold).
PREFETCH_BLOCKS = 2
#: How much more of a block a decoding thread makes visible to the readers waiting for
#: it at a time.
PROGRESS_STEP = 1 << 20
#: Compressed bytes of a block fetched at a time over the network (_start_partial).
REMOTE_STEP = 256 << 10
#: ``need`` for a whole block.
WHOLE = -1
_METADATA_LIMIT = 1 << 30
_SCHEMA_LIMIT = 16 << 20
# Python-level failures that a malformed image could still provoke deep inside a
# decoder; they are reported as ImageError, never leaked to the caller.
_CORRUPTION = (IndexError, KeyError, ValueError, struct.error, OverflowError, TypeError,
               MemoryError, RecursionError, ZeroDivisionError)


class _File:
    """A regular file being read: its chunks with their start offsets in the file, and
    where its previous read ended."""

    __slots__ = ("chunks", "next_offset", "size", "starts")

    def __init__(self, starts: list[int], chunks: list[tuple[int, int, int]], size: int) -> None:
        self.starts = starts
        self.chunks = chunks  # (block or -1 for a hole, offset in block, length)
        self.size = size
        self.next_offset = 0  # sequential-read detection


class _Block:
    """A block in the cache, decompressed as far as ``done`` bytes of ``size``.

    ``data`` is the decompressed buffer (bytes, or the progressive decoder's output, of
    which only the first ``done`` bytes are final). One thread at a time advances it:
    the one that set ``busy``; the others wait on the image's ``_progress`` condition."""

    __slots__ = ("busy", "data", "decoder", "done", "failed", "size")

    def __init__(self) -> None:
        self.busy = True  # the thread that makes it starts it
        self.data: SpanBuffer = b""
        self.decoder: zstdstream.StreamDecoder | None = None
        self.done = 0
        self.size = -1  # unknown until the section is read
        self.failed = False

    def covers(self, need: int) -> bool:
        return self.size >= 0 and self.done >= (self.size if need < 0 else min(need, self.size))


class DwarfsImage(Filesystem):
    """A DwarFS image (any format 2.x the native tools write), read-only."""

    def __init__(self, f: sections.Source, layout: sections.Layout, meta: Metadata,
                 blocks: list[sections.Section], cache_bytes: int, path: str) -> None:
        self.path = path
        self._f = f
        self.layout = layout
        self.meta = meta
        self._blocks = blocks
        block_size = meta.block_size
        self._cache: SizedLRU[int, _Block] = SizedLRU(
            maxsize=max(cache_bytes, 1),
            getsizeof=lambda b: b.size if b.size >= 0 else block_size)
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)
        self._bad: dict[int, str] = {}
        self._files: dict[int, _File] = {}
        self._queued: dict[int, int] = {}  # block -> how far to decompress it ahead
        self._paths: dict[str, int] = {}
        self._order: TreeOrder | None = None  # built in the background at the first need
        self._order_started = False
        self._prefetcher: ThreadPoolExecutor | None = None  # made at the first prefetch
        self._closed = False

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def from_path(cls, path: str | os.PathLike, offset: int | None = None,
                  size: int | None = None,
                  cache_bytes: int = DEFAULT_CACHE_BYTES) -> DwarfsImage:
        """Open the image at ``offset`` in ``path`` (None: auto-detect), of ``size`` bytes
        (None: up to the end of the file)."""
        f = sections.open_source(path)
        try:
            layout = sections.read_layout(f, offset, size)
            meta, blocks = _load_metadata(f, layout)
        except (ImageError, OSError):
            f.close()
            raise
        except _CORRUPTION as e:
            f.close()
            raise ImageError(f"corrupt image ({type(e).__name__}: {e})") from None
        return cls(f, layout, meta, blocks, cache_bytes, os.fsdecode(path))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool = self._prefetcher
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._f.close()
        self._cache.clear()

    def __enter__(self) -> DwarfsImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def warnings(self) -> list[str]:
        return list(self.meta.warnings)

    # -- lookups ----------------------------------------------------------------------
    def _entry(self, path: str) -> int:
        e = self._paths.get(path)
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
        if len(self._paths) >= PATHS:
            self._paths.clear()  # a plain dict: each get and set is atomic under the GIL
        self._paths[path] = e
        return e

    def _parent_entry(self, parent: str, name: str) -> int | None:
        """The entry of ``parent`` if it was looked up already (a program lists a
        directory, or opens one of its files, before the others): a child is then one
        search in it, where a lookup from the root costs one per component. Only for a
        plain last component, and a parent not ending in "/": cached paths are valid
        ones, so the parent is then canonical."""
        if name in _ODD or parent[-1:] == "/":
            return None
        return self._paths.get(parent) if parent else 0

    def attr_of(self, entry: int) -> Attr:
        """The stat attributes of a directory entry."""
        m = self.meta
        inode = m.ent_inode[entry]
        rec = m.record(entry)
        mode = m.modes[m.inodes.mode_index[rec]]
        uid, gid = m.owner(rec)
        atime, mtime, ctime = m.times_ns(rec)
        rdev = 0
        size = alloc = 0
        fmt = stat.S_IFMT(mode)
        if fmt == stat.S_IFREG:
            k = m.chunk_index(inode)
            size = m.file_size(k)
            alloc = size if m.hole_block is None else m.allocated_size(k)
        elif fmt == stat.S_IFDIR:
            size = len(m.children(inode))
        elif fmt == stat.S_IFLNK:
            size = alloc = len(m.symlink_target(inode))
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            rdev = m.devices[inode - m.device_inode_offset]
        return Attr(mode=mode, nlink=m.nlink(inode, rec), uid=uid, gid=gid, size=size,
                    atime_ns=atime, mtime_ns=mtime, ctime_ns=ctime, rdev=rdev, ino=inode,
                    blocks=(alloc + 511) // 512)

    def getattr(self, path: str) -> Attr:
        return self.attr_of(self._entry(path))

    def readdir(self, path: str) -> list[str]:
        e = self._entry(path)
        m = self.meta
        ino = m.ent_inode[e]
        if ino >= m.dir_count:
            raise fs_error(errno.ENOTDIR, path)
        return [os.fsdecode(m.name(c)) for c in m.children(ino)]

    def readdir_attrs(self, path: str) -> list[tuple[str, Attr]]:
        e = self._entry(path)
        m = self.meta
        ino = m.ent_inode[e]
        if ino >= m.dir_count:
            raise fs_error(errno.ENOTDIR, path)
        return [(os.fsdecode(m.name(c)), self.attr_of(c)) for c in m.children(ino)]

    def readlink(self, path: str) -> str:
        return os.fsdecode(self.readlink_bytes(self._entry(path), path))

    def readlink_bytes(self, entry: int, path: str = "", raw: bool = False) -> bytes:
        """A symlink's target; separators converted to '/' unless ``raw``."""
        m = self.meta
        ino = m.ent_inode[entry]
        if not m.symlink_inode_offset <= ino < m.file_inode_offset:
            raise fs_error(errno.EINVAL, path)
        target = m.symlink_target(ino)
        return target if raw or m.separator == b"/" else target.replace(m.separator, b"/")

    def statfs(self) -> StatFs:
        m = self.meta
        return StatFs(bsize=1, frsize=1, blocks=m.m["total_fs_size"], bfree=0, bavail=0,
                      files=m.num_inodes, ffree=0, namemax=255)

    # -- file data ----------------------------------------------------------------------
    # A file handle is the file's inode number: handles need no release, and all the
    # handles of one inode share its _File (kept in a bounded dict; made again if dropped).
    handles_need_release = False
    reads_by_path = True  # a read without a handle finds the file by its path

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise fs_error(errno.EROFS, path)
        ino = self._file_ino(self._entry(path), path)
        self._file_of(ino)
        return ino

    def _file_ino(self, entry: int, path: str) -> int:
        """The inode of ``entry``, a regular file (EISDIR or EINVAL if it is not one)."""
        m = self.meta
        ino = m.ent_inode[entry]
        if not m.file_inode_offset <= ino < m.device_inode_offset:
            raise fs_error(errno.EISDIR if ino < m.dir_count else errno.EINVAL, path)
        return ino

    def _file_of(self, ino: int) -> _File:
        f = self._files.get(ino)
        if f is None:
            m = self.meta
            chunks = list(m.file_chunks(m.chunk_index(ino)))
            starts = [0, *accumulate(n for _, _, n in chunks)]
            f = _File(starts, chunks, starts[-1])
            if len(self._files) >= CHUNK_LISTS:
                self._files.clear()  # a plain dict: each get and set is atomic under the GIL
            self._files[ino] = f
        return f

    def unchanging(self, fh: int) -> bool:
        return True

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return _joined(self.read_spans(path, size, offset, fh))

    def read_spans(self, path: str, size: int, offset: int, fh: int) -> Spans:
        m = self.meta
        if fh == NO_HANDLE:  # the root directory's inode: never a file's
            fh = self._file_ino(self._entry(path), path)
        elif not m.file_inode_offset <= fh < m.device_inode_offset:
            raise fs_error(errno.EBADF, path)
        if offset == 0 and self._f.local:
            # A program going through a tree reads the next files soon: decompress
            # what they need ahead, and read the blocks of the files after them
            # (nothing if this read does not continue a pass; and a program that opens
            # many files without reading them gets nothing). Not for an image read over
            # the network: each block read ahead would cost its download.
            needs, reads = self._needs_after(fh)
            self._prefetch(needs)
            self._read_ahead(reads)
        return self._spans(self._file_of(fh), size, offset, path)

    def read_entry(self, entry: int, size: int, offset: int) -> bytes:
        """Read from the regular file of a directory entry without a handle."""
        return _joined(self._spans(self._file_of(self._file_ino(entry, "")), size, offset, ""))

    def _spans(self, h: _File, size: int, offset: int, path: str) -> Spans:
        end = min(offset + size, h.size)
        if offset >= end:
            return []
        # The kernel's read-ahead sends several requests at once, served by different
        # threads in any order: "sequential" is near where the reads got to, not equal.
        sequential = abs(offset - h.next_offset) <= SEQUENTIAL_SLACK
        h.next_offset = max(h.next_offset, end) if sequential else end
        i = bisect_right(h.starts, offset) - 1
        parts: Spans = []
        pos = offset
        while pos < end:
            block, boff, length = h.chunks[i]
            start = h.starts[i]
            lo, hi = pos - start, min(end - start, length)
            if block < 0:
                parts.append((bytes(hi - lo), 0, hi - lo))
            else:
                data = self._data(block, boff + hi, path)
                if boff + hi > len(data):
                    log.error("%s: chunk beyond the end of block %d", path, block)
                    raise fs_error(errno.EIO, path)
                parts.append((data, boff + lo, boff + hi))
            pos = start + hi
            i += 1
        if sequential:
            self._prefetch(self._blocks_ahead(h, i))
        return parts

    def _blocks_ahead(self, h: _File, i: int) -> dict[int, int]:
        """The first PREFETCH_BLOCKS distinct blocks of chunks[i:] not yet decompressed
        (to decompress whole)."""
        wanted: dict[int, int] = {}
        with self._lock:  # once, not per chunk: this runs at every sequential read
            for block, _, _ in h.chunks[i:i + 256]:
                if block < 0 or block in wanted:
                    continue
                if not self._covered(block, WHOLE):
                    wanted[block] = WHOLE
                    if len(wanted) == PREFETCH_BLOCKS:
                        break
        return wanted

    def _needs_after(self, ino: int) -> tuple[dict[int, int], list[int]]:
        """What the files after ``ino`` in tree order need (lookahead.TreeOrder); nothing
        until the order is built, in the background, at the first call."""
        order = self._order
        if order is not None:
            return order.needs_after(ino)
        with self._lock:
            started, self._order_started = self._order_started, True
        if not started:
            try:
                self._pool().submit(self._build_order)
            except RuntimeError:  # closed
                pass
        return {}, []

    def _build_order(self) -> None:
        try:
            self._order = TreeOrder(self.meta)
        except _CORRUPTION as e:  # the metadata was validated: this is not expected
            log.warning("%s: no read-ahead in tree order: %s", self.path, e)

    def _prefetch(self, needs: dict[int, int]) -> None:
        """Decompress each block of ``needs`` up to its offset (WHOLE: all of it) in the
        background; a block already queued gets the further of the two targets."""
        for block, need in needs.items():
            with self._lock:
                queued = self._queued.get(block)
                if queued is not None:
                    self._queued[block] = _further(queued, need)
                    continue
                if self._covered(block, need):
                    continue
                self._queued[block] = need
            self._read_ahead((block,))
            try:
                self._pool().submit(self._prefetch_one, block)
            except RuntimeError:  # shut down while a read was in flight
                return

    def _read_ahead(self, blocks: Iterable[int]) -> None:
        """Have the kernel start reading these blocks from the image (a cold disk read
        then overlaps other work, and is done when the decompression gets there)."""
        for block in blocks:
            if block < len(self._blocks):
                s = self._blocks[block]
                self._f.will_need(s.offset, s.header_size + s.length)

    def _pool(self) -> ThreadPoolExecutor:
        """The prefetch workers, started on first use (a mount that is only walked, or
        not used yet, needs none: and importing them costs a mount's start ~2 ms)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("closed")
            if self._prefetcher is None:
                from concurrent.futures import ThreadPoolExecutor

                self._prefetcher = ThreadPoolExecutor(max_workers=PREFETCH_BLOCKS,
                                                      thread_name_prefix="fim-prefetch")
            return self._prefetcher

    def _prefetch_one(self, block: int) -> None:
        """Decompress ``block`` as far as queued, and further while the target grows."""
        done = None
        try:
            while True:
                with self._lock:
                    need = self._queued.get(block)
                    if need is None or need == done:
                        self._queued.pop(block, None)
                        return
                self._data(block, need, "", ahead=True)
                done = need
        except Exception as e:
            with self._lock:
                self._queued.pop(block, None)
            if not isinstance(e, OSError):  # an OSError: the foreground read reports it
                raise

    def _covered(self, n: int, need: int) -> bool:
        """Block ``n`` is cached and decompressed up to ``need`` (the lock held)."""
        b = self._cache.get(n)
        return b is not None and b.covers(need)

    def block(self, n: int, path: str = "") -> SpanBuffer:
        """Decompressed block ``n``, whole (cached). Raises EIO if it cannot be decoded."""
        return self._data(n, WHOLE, path)

    def _data(self, n: int, need: int, path: str, ahead: bool = False) -> SpanBuffer:
        """Block ``n``'s buffer, decompressed at least up to byte ``need`` (WHOLE: all);
        bytes past that may still be in the making. Raises EIO if it cannot be decoded.
        ``ahead``: for the prefetch (the block's memory is then mapped in whole at once:
        what a program going through a tree does not need yet it soon will)."""
        with self._lock:
            b = self._cache.get(n)
            if b is None:
                if n in self._bad:
                    raise fs_error(errno.EIO, path)
                b = _Block()
                self._keep(n, b)
            else:
                while not b.covers(need):
                    if b.failed:
                        raise fs_error(errno.EIO, path)
                    if not b.busy:
                        b.busy = True
                        break
                    self._progress.wait()
                else:
                    return b.data
        try:
            self._advance(n, b, need, ahead)
        except (ImageError, OSError, MemoryError) as e:
            log.error("%s: block %d unreadable: %s", path or self.path, n, e)
            with self._lock:
                if not isinstance(e, OSError):  # a read error (a URL's server) may pass
                    self._bad[n] = str(e)
                b.failed, b.decoder = True, None
                if self._cache.get(n) is b:
                    del self._cache[n]
            raise fs_error(errno.EIO, path) from None
        finally:  # whatever happened, the threads waiting on it go on
            with self._lock:
                b.busy = False
                self._progress.notify_all()
        return b.data

    def _keep(self, n: int, b: _Block) -> None:
        """Cache ``b`` (with the lock held), unless it is larger than the whole cache."""
        try:
            self._cache[n] = b
        except ValueError:
            self._cache.pop(n, None)

    def _advance(self, n: int, b: _Block, need: int, ahead: bool) -> None:
        """Decompress ``b`` (owned by this thread: ``busy``) up to ``need``, publishing
        the progress every PROGRESS_STEP bytes."""
        if b.size < 0:
            self._start(n, b, whole=ahead or need < 0)
        dec = b.decoder
        if dec is None:
            return
        target = b.size if need < 0 else min(need, b.size)
        while b.done < target:
            done = dec.advance(min(target, b.done + PROGRESS_STEP))
            with self._lock:
                b.done = done
                if done == b.size:
                    b.decoder = None
                self._progress.notify_all()
        dec.release_input()  # left half decoded: keep no compressed bytes

    def _start(self, n: int, b: _Block, whole: bool) -> None:
        """Read and verify block ``n``'s section; a zstd block gets a progressive
        decoder, any other is decompressed whole here."""
        if n >= len(self._blocks):
            raise ImageError(f"block {n} does not exist")
        s = sections.resolve(self._f, self._blocks[n])
        if not (whole or self._f.local) and s.compression == codecs.ZSTD \
                and zstdstream.available():
            self._start_partial(n, b, s)
            return
        payload = sections.read_payload(self._f, s)
        if not sections.verify_xxh3(self._f, s, payload):
            raise ImageError("attempt to access damaged block (checksum mismatch)")
        limit = self.meta.block_size
        if s.compression == codecs.ZSTD and zstdstream.available():
            size = codecs.announced(codecs.ZSTD, payload, limit)
            at = s.payload_offset
            dec = zstdstream.StreamDecoder(
                payload, size, lambda pos, count: self._f.pread(at + pos, count), whole)
            data: SpanBuffer = dec.data
            done = 0
        else:
            dec, data = None, codecs.decompress(s.compression, payload, limit)
            size = done = len(data)
        with self._lock:
            b.decoder, b.data, b.size, b.done = dec, data, size, done
            if self._cache.get(n) is b:
                self._keep(n, b)  # accounted at its real size from now on
            self._progress.notify_all()

    def _start_partial(self, n: int, b: _Block, s: sections.Section) -> None:
        """A zstd block of an image read over the network, for a reader that needs part
        of it: its compressed bytes are fetched only as far as decoding goes, REMOTE_STEP
        at a time. The section checksum needs them all, so such a block is checked by
        the decoder and the remote file's identity only (fimfs.remote); a block read
        whole (ahead, or asked for whole) is fetched whole and verified."""
        at, step = s.payload_offset, REMOTE_STEP
        head = self._f.pread(at, min(s.length, step))
        size = codecs.announced(codecs.ZSTD, head, self.meta.block_size)
        dec = zstdstream.StreamDecoder(
            head, size, lambda pos, count: self._f.pread(at + pos, min(count, step)),
            length=s.length)
        with self._lock:
            b.decoder, b.data, b.size, b.done = dec, dec.data, size, 0
            if self._cache.get(n) is b:
                self._keep(n, b)
            self._progress.notify_all()

    # -- inspection ------------------------------------------------------------------
    def walk(self):  # noqa: ANN201 - generator of (path, entry)
        """Every entry in depth-first order as ``(path, entry)``; the root is "/"."""
        m = self.meta
        stack = [("/", 0)]
        while stack:
            path, e = stack.pop()
            yield path, e
            ino = m.ent_inode[e]
            if ino < m.dir_count:
                prefix = path if path.endswith("/") else path + "/"
                kids = [(prefix + os.fsdecode(m.name(c)), c) for c in m.children(ino)]
                stack.extend(reversed(kids))

    def history(self) -> list[dict]:
        """Entries of the HISTORY sections (informational; undecodable ones are skipped)."""
        out: list = []
        for s in self.layout.sections:
            if s.type != sections.HISTORY:
                continue
            try:
                raw = codecs.decompress(s.compression, sections.read_payload(self._f, s),
                                        _SCHEMA_LIMIT)
                out.extend(_plain(e) for e in thrift.decode(raw, idl.HISTORY).get("entries", []))
            except (ImageError, *_CORRUPTION) as e:
                log.warning("%s: ignoring corrupt history section: %s", self.path, e)
        return out

    def info(self) -> dict:
        """A JSON-serialisable description of the image (``fim info``)."""
        m, lay = self.meta, self.layout
        secs = [sections.resolve(self._f, s) for s in lay.sections]
        codec_counts = Counter(codecs.name(s.compression) for s in secs
                               if s.type == sections.BLOCK)
        md = m.m
        opts = md["options"] or {}
        return {
            "path": self.path,
            "format_version": f"{lay.major}.{lay.minor}",
            "image_offset": lay.offset,
            "image_size": lay.end - lay.offset,
            "section_index": lay.indexed,
            "sections": [{"number": s.number, "type": sections.type_name(s.type),
                          "compression": codecs.name(s.compression),
                          "offset": s.offset - lay.offset, "length": s.length} for s in secs],
            "blocks": {"count": len(self._blocks), "block_size": m.block_size,
                       "codecs": dict(sorted(codec_counts.items()))},
            "total_fs_size": md["total_fs_size"],
            "total_hardlink_size": md["total_hardlink_size"],
            "total_allocated_fs_size": md["total_allocated_fs_size"],
            "inodes": m.num_inodes,
            "entries": m.num_entries,
            "inodes_by_type": m.counts_by_type(),
            "metadata_layout": "v2.2" if m.legacy else "modern",
            "features": m.features,
            "options": {k: v for k, v in opts.items() if v},
            "packed": {k: bool(opts.get(k)) for k in
                       ("packed_chunk_table", "packed_directories", "packed_shared_files_table")},
            "names": "fsst" if (md["compact_names"] or {}).get("symtab") else
                     ("compact" if md["compact_names"] else "plain"),
            "created_by": _text(md["dwarfs_version"]),
            "create_timestamp": md["create_timestamp"],
            "warnings": m.warnings,
            "history": self.history(),
        }

    def check(self, full: bool = False) -> list[str]:
        """Integrity problems (empty: sound). Checks every section checksum (XXH3, and
        SHA-512/256 with ``full``) and that every chunk of every file is readable."""
        problems = []
        for s in self.layout.sections:
            try:
                s = sections.resolve(self._f, s)
                where = f"section {s.number if s.number is not None else '?'} " \
                        f"({sections.type_name(s.type)}) at offset {s.offset - self.layout.offset}"
                if not sections.verify_xxh3(self._f, s):
                    problems.append(f"{where}: XXH3 checksum mismatch")
                elif full and not sections.verify_sha(self._f, s):
                    problems.append(f"{where}: SHA-512/256 checksum mismatch")
            except ImageError as e:
                problems.append(str(e))
        m = self.meta
        lengths = {}
        for n in range(len(self._blocks)):
            try:
                lengths[n] = len(self.block(n))
            except OSError:
                problems.append(f"block {n}: {self._bad.get(n, 'unreadable')}")
        for k in range(len(m.chunk_table) - 1):
            for block, off, size in m.file_chunks(k):
                if block >= 0 and block in lengths and off + size > lengths[block]:
                    problems.append(f"chunk of file #{k} extends beyond block {block}")
                    break
        return problems


def _load_metadata(f: sections.Source, layout: sections.Layout
                   ) -> tuple[Metadata, list[sections.Section]]:
    by_type: dict[int, list[sections.Section]] = {}
    for s in layout.sections:
        by_type.setdefault(s.type, []).append(s)
    schemas, metas = by_type.get(sections.SCHEMA, []), by_type.get(sections.METADATA, [])
    if not schemas:
        raise ImageError("no metadata schema found")
    if not metas:
        raise ImageError("no metadata found")
    if len(schemas) > 1 or len(metas) > 1:
        raise ImageError("multiple metadata found")
    raw = {}
    for s, limit in ((schemas[0], _SCHEMA_LIMIT), (metas[0], _METADATA_LIMIT)):
        payload = sections.read_payload(f, s)
        if not sections.verify_xxh3(f, s, payload):
            raise ImageError(f"{sections.type_name(s.type)} section: checksum mismatch")
        raw[s.type] = codecs.decompress(s.compression, payload, limit)
    schema = parse_schema(raw[sections.SCHEMA])
    values = Decoder(schema, raw[sections.METADATA]).root_value(idl.METADATA)
    blocks = by_type.get(sections.BLOCK, [])
    return Metadata(values, len(blocks)), blocks


def _further(a: int, b: int) -> int:
    """The further of two decompression targets (WHOLE is the furthest)."""
    return WHOLE if WHOLE in (a, b) else max(a, b)


def _joined(spans: Spans) -> bytes:
    if len(spans) == 1:
        data, start, stop = spans[0]
        if isinstance(data, bytes) and start == 0 and stop == len(data):
            return data
    return b"".join([memoryview(data)[start:stop] for data, start, stop in spans])


def _text(b: bytes | None) -> str | None:
    return None if b is None else b.decode(errors="replace")


def _plain(v: object) -> object:
    """Thrift-decoded values made JSON-friendly (bytes → str)."""
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


__all__ = ["DEFAULT_CACHE_BYTES", "DwarfsImage", "type_name"]
