"""DwarfsImage: a DwarFS image as a read-only, thread-safe Filesystem.

Opening validates everything small (checksums of schema and metadata, every
consistency rule: fimfs.dwarfs.metadata); then the image is the Filesystem over three
parts, as native dwarfs splits its reader: the inode reader (fimfs.dwarfs.inodes:
lookups, chunk mapping, what to read ahead), the block cache with its prefetch
workers (fimfs.dwarfs.blockcache), and inspection (fimfs.dwarfs.inspect: ``fim info``,
``fim check``). The request paths call into the parts directly: no layer in between.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import ImageError
from ..vfs import NO_HANDLE, Attr, Filesystem, Spans, StatFs, fs_error
from . import codecs, idl, inspect, sections
from .blockcache import DEFAULT_CACHE_BYTES, BlockCache
from .frozen_decode import Decoder, parse_schema
from .inodes import InodeReader
from .metadata import CORRUPTION, Metadata, type_name

if TYPE_CHECKING:
    from ..vfs import SpanBuffer

_METADATA_LIMIT = 1 << 30
_SCHEMA_LIMIT = 16 << 20


class DwarfsImage(Filesystem):
    """A DwarFS image (any format 2.x the native tools write), read-only."""

    def __init__(self, f: sections.Source, layout: sections.Layout, meta: Metadata,
                 blocks: list[sections.Section], cache_bytes: int, path: str) -> None:
        self.path = path
        self._f = f
        self.layout = layout
        self.meta = meta
        self.cache = BlockCache(f, blocks, meta.block_size, cache_bytes, path)
        self.inodes = InodeReader(meta, self.cache, path)

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
        except CORRUPTION as e:
            f.close()
            raise ImageError(f"corrupt image ({type(e).__name__}: {e})") from None
        return cls(f, layout, meta, blocks, cache_bytes, os.fsdecode(path))

    def close(self) -> None:
        self.cache.close()  # its workers read the file
        self._f.close()

    def __enter__(self) -> DwarfsImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def warnings(self) -> list[str]:
        return list(self.meta.warnings)

    # -- lookups (fimfs.dwarfs.inodes) ---------------------------------------------------
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
        return self.attr_of(self.inodes.entry(path))

    def readdir(self, path: str) -> list[str]:
        e = self.inodes.entry(path)
        m = self.meta
        ino = m.ent_inode[e]
        if ino >= m.dir_count:
            raise fs_error(errno.ENOTDIR, path)
        return [os.fsdecode(m.name(c)) for c in m.children(ino)]

    def readdir_attrs(self, path: str) -> list[tuple[str, Attr]]:
        e = self.inodes.entry(path)
        m = self.meta
        ino = m.ent_inode[e]
        if ino >= m.dir_count:
            raise fs_error(errno.ENOTDIR, path)
        return [(os.fsdecode(m.name(c)), self.attr_of(c)) for c in m.children(ino)]

    def readlink(self, path: str) -> str:
        return os.fsdecode(self.readlink_bytes(self.inodes.entry(path), path))

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
    # handles of one inode share its OpenFile (kept in a bounded dict; made again if dropped).
    handles_need_release = False
    reads_by_path = True  # a read without a handle finds the file by its path

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise fs_error(errno.EROFS, path)
        inodes = self.inodes
        ino = inodes.file_ino(inodes.entry(path), path)
        inodes.file_of(ino)
        return ino

    def unchanging(self, fh: int) -> bool:
        return True

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return _joined(self.read_spans(path, size, offset, fh))

    def read_spans(self, path: str, size: int, offset: int, fh: int) -> Spans:
        m, inodes = self.meta, self.inodes
        if fh == NO_HANDLE:  # the root directory's inode: never a file's
            fh = inodes.file_ino(inodes.entry(path), path)
        elif not m.file_inode_offset <= fh < m.device_inode_offset:
            raise fs_error(errno.EBADF, path)
        if offset == 0 and self._f.local:
            # Not for an image read over the network: each block read ahead would cost
            # its download.
            inodes.ahead_of(fh)
        return inodes.spans(inodes.file_of(fh), size, offset, path)

    def read_entry(self, entry: int, size: int, offset: int) -> bytes:
        """Read from the regular file of a directory entry without a handle."""
        inodes = self.inodes
        return _joined(inodes.spans(inodes.file_of(inodes.file_ino(entry, "")), size, offset, ""))

    def block(self, n: int, path: str = "") -> SpanBuffer:
        """Decompressed block ``n``, whole (cached). Raises EIO if it cannot be decoded."""
        return self.cache.block(n, path)

    # -- inspection (fimfs.dwarfs.inspect) ----------------------------------------------
    def walk(self) -> Iterator[tuple[str, int]]:
        """Every entry in depth-first order as ``(path, entry)``; the root is "/"."""
        return inspect.walk(self.meta)

    def history(self) -> list[dict]:
        """Entries of the HISTORY sections (informational; undecodable ones are skipped)."""
        return inspect.history(self._f, self.layout, self.path)

    def info(self) -> dict:
        """A JSON-serialisable description of the image (``fim info``)."""
        return inspect.info(self.meta, self.layout, self._f, self.cache, self.path)

    def check(self, full: bool = False) -> list[str]:
        """Integrity problems (empty: sound). Checks every section checksum (XXH3, and
        SHA-512/256 with ``full``) and that every chunk of every file is readable."""
        return inspect.check(self.meta, self.layout, self._f, self.cache, full)


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


def _joined(spans: Spans) -> bytes:
    if len(spans) == 1:
        data, start, stop = spans[0]
        if isinstance(data, bytes) and start == 0 and stop == len(data):
            return data
    return b"".join([memoryview(data)[start:stop] for data, start, stop in spans])


__all__ = ["DEFAULT_CACHE_BYTES", "DwarfsImage", "type_name"]
