"""The block cache of a DwarFS image, with its prefetch (native dwarfs' ``block_cache``).

Blocks are decompressed on demand into an LRU bounded in bytes. A zstd block is
decompressed only as far as its readers need (zstdstream), as native dwarfs does: a
read waits for its own bytes, not for the whole block, and a block that only random
reads touch is never decoded past the last of them. Blocks asked for ahead are
decompressed in background threads (the codecs release the GIL, so that overlaps for
real). What to ask for ahead is the inode reader's business (fimfs.dwarfs.inodes).
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..errors import ImageError
from ..lru import SizedLRU
from ..vfs import fs_error
from . import codecs, sections, zstdstream

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from ..vfs import SpanBuffer

log = logging.getLogger(__name__)

#: The block cache, as native dwarfs' default (``-o cachesize=512m``): on a root of a few
#: hundred MB, every block stays decompressed once touched, whatever order it is read in.
DEFAULT_CACHE_BYTES = 512 << 20
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


class Block:
    """A block in the cache, decompressed as far as ``done`` bytes of ``size``.

    ``data`` is the decompressed buffer (bytes, or the progressive decoder's output, of
    which only the first ``done`` bytes are final). One thread at a time advances it:
    the one that set ``busy``; the others wait on the cache's ``progress`` condition."""

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


class BlockCache:
    """The decompressed blocks of one image (``blocks``: its BLOCK sections, in order),
    thread-safe, and the workers that decompress blocks ahead."""

    def __init__(self, f: sections.Source, blocks: list[sections.Section], block_size: int,
                 cache_bytes: int, path: str) -> None:
        self._f = f
        self.sections = blocks
        self.block_size = block_size
        self.path = path
        self.lru: SizedLRU[int, Block] = SizedLRU(
            maxsize=max(cache_bytes, 1),
            getsizeof=lambda b: b.size if b.size >= 0 else block_size)
        self.lock = threading.Lock()
        self.progress = threading.Condition(self.lock)
        self.bad: dict[int, str] = {}  # block -> why it cannot be decoded
        self.queued: dict[int, int] = {}  # block -> how far to decompress it ahead
        self.workers: ThreadPoolExecutor | None = None  # made at the first prefetch
        self._closed = False

    def close(self) -> None:
        """Stop the workers (waiting for the running ones) and drop every block."""
        with self.lock:
            self._closed = True
            pool = self.workers
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self.lru.clear()

    # -- reading -----------------------------------------------------------------------
    def covered(self, n: int, need: int) -> bool:
        """Block ``n`` is cached and decompressed up to ``need`` (the lock held)."""
        b = self.lru.get(n)
        return b is not None and b.covers(need)

    def block(self, n: int, path: str = "") -> SpanBuffer:
        """Decompressed block ``n``, whole (cached). Raises EIO if it cannot be decoded."""
        return self.data(n, WHOLE, path)

    def data(self, n: int, need: int, path: str, ahead: bool = False) -> SpanBuffer:
        """Block ``n``'s buffer, decompressed at least up to byte ``need`` (WHOLE: all);
        bytes past that may still be in the making. Raises EIO if it cannot be decoded.
        ``ahead``: for the prefetch (the block's memory is then mapped in whole at once:
        what a program going through a tree does not need yet it soon will)."""
        with self.lock:
            b = self.lru.get(n)
            if b is None:
                if n in self.bad:
                    raise fs_error(errno.EIO, path)
                b = Block()
                self._keep(n, b)
            else:
                while not b.covers(need):
                    if b.failed:
                        raise fs_error(errno.EIO, path)
                    if not b.busy:
                        b.busy = True
                        break
                    self.progress.wait()
                else:
                    return b.data
        try:
            self._advance(n, b, need, ahead)
        except (ImageError, OSError, MemoryError) as e:
            log.error("%s: block %d unreadable: %s", path or self.path, n, e)
            with self.lock:
                if not isinstance(e, OSError):  # a read error (a URL's server) may pass
                    self.bad[n] = str(e)
                b.failed, b.decoder = True, None
                if self.lru.get(n) is b:
                    del self.lru[n]
            raise fs_error(errno.EIO, path) from None
        finally:  # whatever happened, the threads waiting on it go on
            with self.lock:
                b.busy = False
                self.progress.notify_all()
        return b.data

    def _keep(self, n: int, b: Block) -> None:
        """Cache ``b`` (with the lock held), unless it is larger than the whole cache."""
        try:
            self.lru[n] = b
        except ValueError:
            self.lru.pop(n, None)

    def _advance(self, n: int, b: Block, need: int, ahead: bool) -> None:
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
            with self.lock:
                b.done = done
                if done == b.size:
                    b.decoder = None
                self.progress.notify_all()
        dec.release_input()  # left half decoded: keep no compressed bytes

    def _start(self, n: int, b: Block, whole: bool) -> None:
        """Read and verify block ``n``'s section; a zstd block gets a progressive
        decoder, any other is decompressed whole here."""
        if n >= len(self.sections):
            raise ImageError(f"block {n} does not exist")
        s = sections.resolve(self._f, self.sections[n])
        if not (whole or self._f.local) and s.compression == codecs.ZSTD \
                and zstdstream.available():
            self._start_partial(n, b, s)
            return
        payload = sections.read_payload(self._f, s)
        if not sections.verify_xxh3(self._f, s, payload):
            raise ImageError("attempt to access damaged block (checksum mismatch)")
        limit = self.block_size
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
        with self.lock:
            b.decoder, b.data, b.size, b.done = dec, data, size, done
            if self.lru.get(n) is b:
                self._keep(n, b)  # accounted at its real size from now on
            self.progress.notify_all()

    def _start_partial(self, n: int, b: Block, s: sections.Section) -> None:
        """A zstd block of an image read over the network, for a reader that needs part
        of it: its compressed bytes are fetched only as far as decoding goes, REMOTE_STEP
        at a time. The section checksum needs them all, so such a block is checked by
        the decoder and the remote file's identity only (fimfs.remote); a block read
        whole (ahead, or asked for whole) is fetched whole and verified."""
        at, step = s.payload_offset, REMOTE_STEP
        head = self._f.pread(at, min(s.length, step))
        size = codecs.announced(codecs.ZSTD, head, self.block_size)
        dec = zstdstream.StreamDecoder(
            head, size, lambda pos, count: self._f.pread(at + pos, min(count, step)),
            length=s.length)
        with self.lock:
            b.decoder, b.data, b.size, b.done = dec, dec.data, size, 0
            if self.lru.get(n) is b:
                self._keep(n, b)
            self.progress.notify_all()

    # -- ahead -------------------------------------------------------------------------
    def missing(self, chunks: list[tuple[int, int, int]]) -> dict[int, int]:
        """The first PREFETCH_BLOCKS distinct blocks of ``chunks`` (block, offset, length;
        block -1: a hole) not yet decompressed whole, to decompress whole."""
        wanted: dict[int, int] = {}
        with self.lock:  # once, not per chunk: this runs at every sequential read
            for block, _, _ in chunks:
                if block < 0 or block in wanted:
                    continue
                if not self.covered(block, WHOLE):
                    wanted[block] = WHOLE
                    if len(wanted) == PREFETCH_BLOCKS:
                        break
        return wanted

    def prefetch(self, needs: dict[int, int]) -> None:
        """Decompress each block of ``needs`` up to its offset (WHOLE: all of it) in the
        background; a block already queued gets the further of the two targets."""
        for block, need in needs.items():
            with self.lock:
                queued = self.queued.get(block)
                if queued is not None:
                    self.queued[block] = _further(queued, need)
                    continue
                if self.covered(block, need):
                    continue
                self.queued[block] = need
            self.read_ahead((block,))
            try:
                self.submit(self._prefetch_one, block)
            except RuntimeError:  # shut down while a read was in flight
                return

    def read_ahead(self, blocks: Iterable[int]) -> None:
        """Have the kernel start reading these blocks from the image (a cold disk read
        then overlaps other work, and is done when the decompression gets there)."""
        for block in blocks:
            if block < len(self.sections):
                s = self.sections[block]
                self._f.will_need(s.offset, s.header_size + s.length)

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` on a worker; RuntimeError once closed. The workers start on
        first use (a mount that is only walked, or not used yet, needs none: and
        importing them costs a mount's start ~2 ms)."""
        with self.lock:
            if self._closed:
                raise RuntimeError("closed")
            if self.workers is None:
                from concurrent.futures import ThreadPoolExecutor

                self.workers = ThreadPoolExecutor(max_workers=PREFETCH_BLOCKS,
                                                  thread_name_prefix="fim-prefetch")
            pool = self.workers
        pool.submit(fn, *args)

    def _prefetch_one(self, block: int) -> None:
        """Decompress ``block`` as far as queued, and further while the target grows."""
        done = None
        try:
            while True:
                with self.lock:
                    need = self.queued.get(block)
                    if need is None or need == done:
                        self.queued.pop(block, None)
                        return
                self.data(block, need, "", ahead=True)
                done = need
        except Exception as e:
            with self.lock:
                self.queued.pop(block, None)
            if not isinstance(e, OSError):  # an OSError: the foreground read reports it
                raise


def _further(a: int, b: int) -> int:
    """The further of two decompression targets (WHOLE is the furthest)."""
    return WHOLE if WHOLE in (a, b) else max(a, b)
