"""Writing sections: file data packed into blocks, compressed in worker threads.

The caller reads files straight into the free space of the current block
(:meth:`BlockStream.space` / :meth:`BlockStream.commit`); full blocks go to a
thread pool (zstandard, lz4, lzma and hashlib release the GIL, so compression and
checksumming overlap with reading) and are written in block order as they
complete. At most ``jobs + 1`` blocks are in flight, which bounds memory whatever
the size of the tree.
"""

from __future__ import annotations

import queue
import struct
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, BinaryIO

from . import codecs
from .sections import BLOCK, INDEX, pack_header


def compress_section(typ: int, number: int, comp: int, level: int | None,
                     data: bytes) -> tuple[bytes, bytes]:
    """(header, payload) of one section; stored uncompressed when that is not larger."""
    payload, used = data, codecs.NONE
    if comp != codecs.NONE and data:
        packed = codecs.compress(comp, data, level)
        if len(packed) < len(data):
            payload, used = packed, comp
    return pack_header(typ, used, number, payload), payload


class _Workers:
    """Daemon threads running submitted calls. Unlike ThreadPoolExecutor's threads they
    do not hold an interrupted process up until the block they compress is done."""

    def __init__(self, n: int) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._n = n
        for i in range(n):
            threading.Thread(target=self._run, name=f"fim-compress-{i}", daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        f: Future = Future()
        self._queue.put((f, fn, args))
        return f

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            f, fn, args = job
            if f.set_running_or_notify_cancel():
                try:
                    f.set_result(fn(*args))
                except BaseException as e:  # handed to whoever waits for the result
                    f.set_exception(e)

    def shutdown(self) -> None:
        for _ in range(self._n):
            self._queue.put(None)


class SectionWriter:
    """Appends numbered sections to ``out`` and remembers them for the section index."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.pos = 0  # relative to the image start (after any header)
        self.number = 0
        self._index: list[int] = []

    def write(self, header: bytes, payload: bytes) -> None:
        typ = struct.unpack_from("<H", header, 52)[0]
        self._index.append((typ << 48) | self.pos)
        self.out.write(header)
        self.out.write(payload)
        self.pos += len(header) + len(payload)
        self.number += 1

    def add(self, typ: int, comp: int, level: int | None, data: bytes) -> None:
        self.write(*compress_section(typ, self.number, comp, level, data))

    def add_index(self) -> None:
        """The SECTION_INDEX (doc 2.5): every section including itself, uncompressed."""
        entries = [*self._index, (INDEX << 48) | self.pos]
        payload = struct.pack(f"<{len(entries)}Q", *entries)
        self.write(pack_header(INDEX, codecs.NONE, self.number, payload), payload)


class BlockStream:
    """File data in, compressed BLOCK sections out (in order)."""

    def __init__(self, writer: SectionWriter, block_size: int, comp: int, level: int | None,
                 jobs: int) -> None:
        self.writer = writer
        self.block_size = block_size
        self.comp, self.level = comp, level
        self.blocks = 0  # number of the block being filled
        self.raw_bytes = 0  # uncompressed bytes of the blocks handed over so far
        self.written_raw = 0  # ... of the blocks written out so far
        self._buf = bytearray(block_size)
        self._fill = 0
        self._pool = _Workers(max(jobs, 1))
        self._pending: deque[tuple[Future, int]] = deque()  # (compression, raw size)
        self._max_pending = max(jobs, 1) + 1

    def space(self) -> tuple[int, int, memoryview]:
        """(block number, offset, free space) of the block being filled; never empty."""
        if self._fill == self.block_size:
            self._submit()
        return self.blocks, self._fill, memoryview(self._buf)[self._fill:]

    def commit(self, n: int) -> None:
        """``n`` bytes were written at the start of the free space returned by space()."""
        self._fill += n

    def _submit(self) -> None:
        data = self._buf if self._fill == self.block_size else bytes(self._buf[:self._fill])
        self._pending.append((self._pool.submit(
            compress_section, BLOCK, self.writer.number + len(self._pending), self.comp,
            self.level, data), self._fill))
        self.raw_bytes += self._fill
        self.blocks += 1
        self._buf = bytearray(self.block_size)
        self._fill = 0
        self.drain(block=len(self._pending) >= self._max_pending)

    def drain(self, block: bool = False) -> None:
        """Write the finished blocks at the head of the queue (waiting for one if
        ``block``)."""
        while self._pending and (block or self._pending[0][0].done()):
            done, raw = self._pending.popleft()
            self.writer.write(*done.result())
            self.written_raw += raw
            block = False

    def finish(self) -> int:
        """Flush the last block, write everything; returns the number of blocks."""
        if self._fill:
            self._submit()
        while self._pending:
            self.drain(block=True)
        self._pool.shutdown()
        return self.blocks

    def abort(self) -> None:
        """Drop queued work (after an error or an interrupt)."""
        for f, _ in self._pending:
            f.cancel()
        self._pool.shutdown()
