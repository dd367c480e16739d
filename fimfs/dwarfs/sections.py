"""DwarFS sections: headers, image offset detection, the section index, checksums.

Format doc section 2. An image is a sequence of sections that may start at any
offset inside a larger file (a launcher, or a FlatImage layer). Format 2.0/2.1
images have an 8-byte file header and 8-byte section headers without checksums;
2.2+ have 64-byte headers with XXH3-64 and SHA-512/256.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple, Protocol

import xxhash

from ..errors import ImageError

MAGIC = b"DWARFS"
MAJOR = 2
MINOR_MAX = 6
BLOCK, SCHEMA, METADATA, INDEX, HISTORY = 0, 7, 8, 9, 10
TYPE_NAMES = {BLOCK: "BLOCK", SCHEMA: "METADATA_V2_SCHEMA", METADATA: "METADATA_V2",
              INDEX: "SECTION_INDEX", HISTORY: "HISTORY"}
_HEADER = struct.Struct("<6sBB32sQIHHQ")  # magic major minor sha xxh3 number type comp length
_OLD_HEADER = struct.Struct("<HBBI")  # type compression unused length
_OFFSET_MASK = (1 << 48) - 1
_SCAN_CHUNK = 1 << 20
_FIRST_SCAN = 32 << 10


def type_name(t: int) -> str:
    return TYPE_NAMES.get(t, f"unknown({t})")


class Section(NamedTuple):
    offset: int  # absolute file offset of the section header
    header_size: int  # 64, or 8 for format 2.0/2.1
    type: int
    compression: int
    length: int  # payload length (compressed)
    number: int | None = None
    xxh3: int | None = None
    sha: bytes | None = None
    lazy: bool = False  # known from the section index only; header not read yet (resolve())

    @property
    def payload_offset(self) -> int:
        return self.offset + self.header_size

    @property
    def end(self) -> int:
        return self.payload_offset + self.length


class Source(Protocol):
    """What the reader reads an image from: a local :class:`ImageFile`, or a
    :class:`fimfs.remote.RemoteFile` for a URL."""

    size: int
    local: bool  # a file on this machine (reading ahead costs no download)

    def pread(self, offset: int, n: int) -> bytes: ...
    def read_upto(self, offset: int, n: int) -> bytes: ...
    def will_need(self, offset: int, n: int) -> None: ...
    def close(self) -> None: ...


def open_source(path: str | os.PathLike) -> Source:
    """The image file at ``path``, or at a URL (``http://``, ``https://``; read by
    ranges through the block cache of fimfs.remote)."""
    from ..remote import RemoteFile, is_url

    return RemoteFile(os.fsdecode(path)) if is_url(path) else ImageFile(path)


class ImageFile:
    """Positional, thread-safe reads of one file (os.pread), bounded to the image."""

    local = True

    def __init__(self, path: str | os.PathLike) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise ImageError(f"cannot open {os.fsdecode(path)}: {e.strerror}") from None
        self.size = os.fstat(self.fd).st_size

    def pread(self, offset: int, n: int) -> bytes:
        out = os.pread(self.fd, n, offset)
        if len(out) != n:
            raise ImageError("truncated image (unexpected end of file)")
        return out

    def read_upto(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (fewer at the end of the file)."""
        return os.pread(self.fd, n, offset)

    def will_need(self, offset: int, n: int) -> None:
        """Ask the kernel to start reading ``n`` bytes at ``offset`` now (a block about to
        be decompressed in the background): a cold disk read then overlaps other work."""
        try:
            os.posix_fadvise(self.fd, offset, n, os.POSIX_FADV_WILLNEED)
        except (OSError, AttributeError):
            pass  # advice only

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def parse_header(raw: bytes, offset: int) -> Section:
    magic, major, minor, sha, xxh, number, typ, comp, length = _HEADER.unpack(raw)
    if magic != MAGIC or major != MAJOR:
        raise ImageError(f"bad section header at offset {offset}")
    return Section(offset, 64, typ, comp, length, number, xxh, sha)


def pack_header(typ: int, comp: int, number: int, payload: bytes, minor: int = 5) -> bytes:
    """A complete 64-byte 2.x section header for ``payload`` (checksums included)."""
    tail = struct.pack("<IHHQ", number, typ, comp, len(payload))
    xxh = xxhash.xxh3_64()
    xxh.update(tail)
    xxh.update(payload)
    mid = struct.pack("<Q", xxh.intdigest()) + tail
    sha = _sha512_256()
    sha.update(mid)
    sha.update(payload)
    return MAGIC + bytes([MAJOR, minor]) + sha.digest() + mid


def _sha512_256():  # noqa: ANN202 - a hashlib object
    # hashlib loads OpenSSL (~3 ms): only writers and full checks need it, not a mount.
    import hashlib

    return hashlib.new("sha512_256")


def _candidate(f: Source, p: int, end: int) -> bool:
    """Is there a plausible image at ``p`` (doc 2.7)?"""
    try:
        minor = f.pread(p + 7, 1)[0]
        if minor < 2:
            t1, c1, _, l1 = _OLD_HEADER.unpack(f.pread(p + 8, 8))
            nxt = p + 16 + l1
            if t1 not in (BLOCK, SCHEMA) or c1 > 4 or l1 == 0 or nxt + 8 > end:
                return False
            t2, c2, _, l2 = _OLD_HEADER.unpack(f.pread(nxt, 8))
            want = (BLOCK, SCHEMA) if t1 == BLOCK else (METADATA,)
            return t2 in want and c2 <= 4 and l2 > 0
        if p + 64 > end:
            return False
        h = _HEADER.unpack(f.pread(p, 64))
        nxt = p + 64 + h[8]
        if h[5] != 0 or nxt + 64 > end:
            return False
        h2 = _HEADER.unpack(f.pread(nxt, 64))
        return h2[0] == MAGIC and h2[1] == MAJOR and h2[5] == 1
    except ImageError:
        return False


def find_image_offset(f: Source, start: int = 0, end: int | None = None) -> int:
    """Find the first section of an image inside ``[start, end)`` of the file."""
    end = f.size if end is None else end
    needle = MAGIC + bytes([MAJOR])
    pos = start
    step = _FIRST_SCAN  # an image usually starts early: read little first (over a network)
    while pos < end:
        chunk = f.read_upto(pos, min(step + len(needle), end - pos))
        i = chunk.find(needle)
        while i >= 0:
            if _candidate(f, pos + i, end):
                return pos + i
            i = chunk.find(needle, i + 1)
        pos += step
        step = min(2 * step, _SCAN_CHUNK)
    raise ImageError("no filesystem found")


def _walk_old(f: Source, offset: int, end: int) -> list[Section]:
    sections = []
    pos = offset + 8
    while pos < end:
        if pos + 8 > end:
            raise ImageError(f"truncated section header at offset {pos}")
        typ, comp, _, length = _OLD_HEADER.unpack(f.pread(pos, 8))
        if pos + 8 + length > end:
            raise ImageError(f"truncated section at offset {pos}")
        sections.append(Section(pos, 8, typ, comp, length))
        pos += 8 + length
    return sections


def _walk(f: Source, offset: int, end: int) -> list[Section]:
    sections = []
    pos = offset
    while pos < end:
        if pos + 64 > end:
            raise ImageError(f"truncated section header at offset {pos}")
        s = parse_header(f.pread(pos, 64), pos)
        if s.end > end:
            raise ImageError(f"truncated section at offset {pos}")
        sections.append(s)
        pos = s.end
    return sections


def _from_index(f: Source, offset: int, end: int) -> list[Section] | None:
    """Sections listed by a valid section index, or None (doc 2.5)."""
    if end - offset < 64 + 24:
        return None
    last = int.from_bytes(f.pread(end - 8, 8), "little")
    if last >> 48 != INDEX:
        return None
    pos = offset + (last & _OFFSET_MASK)
    if pos + 64 > end:
        return None
    try:
        idx = parse_header(f.pread(pos, 64), pos)
    except ImageError:
        return None
    if (idx.type != INDEX or idx.compression != 0 or idx.length % 8 or idx.end != end
            or idx.length < 24 or not verify_xxh3(f, idx)):
        return None
    raw = f.pread(idx.payload_offset, idx.length)
    entries = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]
    offs = [e & _OFFSET_MASK for e in entries]
    if offs[0] != 0 or any(b <= a for a, b in zip(offs, offs[1:])) or offs[-1] != pos - offset:
        return None
    sections = []
    bounds = [offset + o for o in offs] + [end]
    for e, start, stop in zip(entries, bounds, bounds[1:]):
        if e >> 48 == BLOCK:  # blocks are many: their headers are read when first used
            sections.append(Section(start, 64, BLOCK, -1, stop - start - 64, lazy=True))
            continue
        s = parse_header(f.pread(start, 64), start)
        if s.type != e >> 48 or s.end != stop:
            return None
        sections.append(s)
    return sections


def resolve(f: Source, s: Section) -> Section:
    """The real header of a section known only from the index, checked against it."""
    if not s.lazy:
        return s
    real = parse_header(f.pread(s.offset, 64), s.offset)
    if real.type != s.type or real.length != s.length:
        raise ImageError(f"section at offset {s.offset} does not match the section index")
    return real


class Layout(NamedTuple):
    """Where the image is and what sections it has."""

    offset: int
    end: int
    major: int
    minor: int
    sections: list[Section]
    indexed: bool  # a valid section index was found and used


def read_layout(f: Source, offset: int | None = None, size: int | None = None) -> Layout:
    """Locate the image (``offset`` None = auto-detect) and list its sections."""
    if offset is None:
        offset = find_image_offset(f, 0, f.size if size is None else size)
    end = f.size if size is None else offset + size
    if offset < 0 or end > f.size or offset + 8 > end:
        raise ImageError("image offset or size outside the file")
    head = f.pread(offset, 8)
    if head[:6] != MAGIC:
        raise ImageError(f"no DwarFS image at offset {offset}")
    major, minor = head[6], head[7]
    if major != MAJOR or minor > MINOR_MAX:
        raise ImageError(f"unsupported DwarFS format version {major}.{minor}")
    if minor < 2:
        return Layout(offset, end, major, minor, _walk_old(f, offset, end), False)
    indexed = _from_index(f, offset, end) if minor >= 4 else None
    if indexed is not None:
        return Layout(offset, end, major, minor, indexed, True)
    return Layout(offset, end, major, minor, _walk(f, offset, end), False)


def read_payload(f: Source, s: Section) -> bytes:
    return f.pread(s.payload_offset, s.length)


def verify_xxh3(f: Source, s: Section, payload: bytes | None = None) -> bool:
    """XXH3-64 over number..payload; format 2.0 sections have no checksum (always True)."""
    if s.xxh3 is None:
        return True
    h = xxhash.xxh3_64()
    h.update(f.pread(s.offset + 48, 16))
    h.update(read_payload(f, s) if payload is None else payload)
    return h.intdigest() == s.xxh3


def verify_sha(f: Source, s: Section) -> bool:
    """SHA-512/256 over the xxh3 field..payload (the full integrity check)."""
    if s.sha is None:
        return True
    h = _sha512_256()
    pos, stop = s.offset + 40, s.end
    while pos < stop:
        n = min(1 << 22, stop - pos)
        h.update(f.pread(pos, n))
        pos += n
    return h.digest() == s.sha
