"""File contents for the writer: de-duplication, ordering, and reading into blocks.

Identical files are stored once. Only files whose size is shared with another
file are hashed up front (XXH3-128, like mkdwarfs), so a big file of unique size
is read exactly once. Sparse files are read extent by extent (SEEK_DATA /
SEEK_HOLE) and their holes become hole chunks. Every file is checked against the
scan when it is read: a different inode, size or mtime, or different content
from the hash pass, is an error naming the file.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import xxhash

from .blocks import BlockStream
from .scan import FileData, SourceError, fail

HOLE = 0xFFFFFFFF  # block number of a hole chunk until the real hole block is known
_READ = 1 << 20
_EXTENT = struct.Struct("<QQ")


@dataclass(slots=True, eq=False)
class Content:
    """One distinct file content and the inodes that have it."""

    files: list[FileData]
    first_chunk: int = 0  # range in Chunks
    end_chunk: int = 0
    hole_bytes: int = 0

    @property
    def rep(self) -> FileData:
        return self.files[0]


@dataclass(slots=True)
class Chunks:
    """All chunks, in the order written. A hole chunk has block HOLE and its byte
    count in ``holes[size]``; it is encoded once the data chunk widths are known."""

    block: array = field(default_factory=lambda: array("I"))
    offset: array = field(default_factory=lambda: array("I"))
    size: array = field(default_factory=lambda: array("I"))
    holes: list[int] = field(default_factory=list)
    start: int = 0  # first chunk of the file being added: chunks never merge across files

    def add(self, block: int, offset: int, size: int) -> None:
        n = len(self.block)
        if n > self.start and self.block[-1] == block != HOLE and \
                self.offset[-1] + self.size[-1] == offset:
            self.size[-1] += size  # continues the previous chunk
            return
        self.block.append(block)
        self.offset.append(offset)
        self.size.append(size)

    def add_hole(self, nbytes: int) -> None:
        self.add(HOLE, 0, len(self.holes))
        self.holes.append(nbytes)


def _open(f: FileData) -> int:
    try:
        fd = os.open(f.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise fail(f.path, e) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (f.dev, f.ino):
        os.close(fd)
        raise _changed(f)
    return fd


def _changed(f: FileData) -> SourceError:
    return SourceError(f"{os.fsdecode(f.path)} changed while it was being read")


def extents(fd: int, size: int, sparse: bool) -> list[tuple[int, int]]:
    """(offset, length) of the data in a file; the gaps between them are holes."""
    if not sparse or not size:
        return [(0, size)] if size else []
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole from here to the end
                break
            return [(0, size)]  # SEEK_DATA unsupported: read it all
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if start >= end:
            break
        out.append((start, end - start))
        pos = end
    return out


def _digest(f: FileData) -> bytes:
    h = xxhash.xxh3_128()
    fd = _open(f)
    try:
        for off, n in extents(fd, f.size, f.sparse):
            h.update(_EXTENT.pack(off, n))
            end = off + n
            while off < end:
                data = os.pread(fd, min(_READ, end - off), off)
                if not data:
                    raise _changed(f)
                h.update(data)
                off += len(data)
    except OSError as e:
        raise fail(f.path, e) from None
    finally:
        os.close(fd)
    return h.digest()


def group(files: Sequence[FileData], progress: Callable[[int], None] | None = None
          ) -> list[Content]:
    """Distinct contents, each with its files, in the order of ``files``."""
    by_size: dict[int, list[FileData]] = {}
    for f in files:
        by_size.setdefault(f.size, []).append(f)
    for size, same in by_size.items():
        if size and len(same) > 1:
            for f in same:
                f.digest = _digest(f)
                if progress:
                    progress(f.size)
    contents: dict[tuple[int, bytes | int], Content] = {}
    for f in files:
        key = (f.size, f.digest if f.digest is not None or not f.size else id(f))
        c = contents.get(key)
        if c is None:
            contents[key] = Content([f])
        else:
            c.files.append(f)
    return list(contents.values())


def order(contents: list[Content], how: str) -> list[Content]:
    """Data order. ``path``: tree order. ``similarity``: by file name read backwards
    (extension first), so files of one type and of one name, which tend to be alike,
    end up in the same block where the compressor sees them together."""
    if how == "path":
        return contents
    return sorted(contents, key=lambda c: (os.path.basename(c.rep.path)[::-1], c.rep.path))


def store(c: Content, stream: BlockStream, chunks: Chunks) -> None:
    """Read one content into the block stream and record its chunks."""
    f = c.rep
    c.first_chunk = chunks.start = len(chunks.block)
    if f.size:
        fd = _open(f)
        try:
            c.hole_bytes = _read_into(f, fd, stream, chunks)
            st = os.fstat(fd)
        except OSError as e:
            raise fail(f.path, e) from None
        finally:
            os.close(fd)
        if st.st_size != f.size or st.st_mtime_ns != f.mtime_ns:
            raise _changed(f)
    c.end_chunk = len(chunks.block)


def _read_into(f: FileData, fd: int, stream: BlockStream, chunks: Chunks) -> int:
    """Returns the number of bytes in holes."""
    h = xxhash.xxh3_128() if f.digest is not None else None
    pos = holes = 0
    for off, n in extents(fd, f.size, f.sparse):
        if off > pos:
            chunks.add_hole(off - pos)
            holes += off - pos
        if h:
            h.update(_EXTENT.pack(off, n))
        end = off + n
        while off < end:
            block, boff, free = stream.space()
            got = os.preadv(fd, [free[:end - off]], off)
            if not got:
                raise _changed(f)
            if h:
                h.update(free[:got])
            stream.commit(got)
            chunks.add(block, boff, got)
            off += got
        pos = end
    if pos < f.size:
        chunks.add_hole(f.size - pos)
        holes += f.size - pos
    if h and h.digest() != f.digest:
        raise _changed(f)
    return holes
