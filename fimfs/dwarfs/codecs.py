"""Section compression codecs (format doc 2.4): framing, size checks, compress/decompress.

Every decoder checks the size the framing announces against a caller-given limit
before it allocates, and the real output size against the announced one, so a
corrupt or hostile section can neither exhaust memory nor pass unnoticed.

Each codec's module is imported where it is first used: a mount imports only what its
image needs (brotli, lz4 and lzma cost a start ~10 ms together when they are loaded).
"""

from __future__ import annotations

import os
import threading

from ..errors import ImageError, UnsupportedError

NONE, LZMA, ZSTD, LZ4, LZ4HC, BROTLI, FLAC, RICEPP = range(8)
NAMES = {NONE: "none", LZMA: "lzma", ZSTD: "zstd", LZ4: "lz4", LZ4HC: "lz4hc",
         BROTLI: "brotli", FLAC: "flac", RICEPP: "ricepp"}
BY_NAME = {v: k for k, v in NAMES.items()}
DECODABLE = frozenset({NONE, LZMA, ZSTD, LZ4, LZ4HC, BROTLI})


def name(comp: int) -> str:
    return NAMES.get(comp, f"unknown({comp})")


def _uleb128(data: bytes) -> tuple[int, int]:
    value = shift = 0
    for i, b in enumerate(data[:10]):
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i + 1
    raise ImageError("brotli: bad size prefix")


def uleb128(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def announced(comp: int, payload: bytes, limit: int) -> int:
    """The uncompressed size the framing announces (-1: none), checked against ``limit``."""
    if comp == ZSTD:
        import zstandard

        size = zstandard.frame_content_size(payload)
        if size < 0:
            raise ImageError("zstd: content size unknown")
    elif comp in (LZ4, LZ4HC):
        if len(payload) < 4:
            raise ImageError("lz4: truncated block")
        size = int.from_bytes(payload[:4], "little")
    elif comp == BROTLI:
        size = _uleb128(payload)[0]
    else:
        return -1
    if size > limit:
        raise ImageError(f"{name(comp)}: uncompressed size {size} exceeds limit {limit}")
    return size


# Decompression runs outside the GIL; more of it at once than there are cores only
# adds memory (every FUSE thread could be holding a 16 MiB block in the making).
_DECODERS = threading.BoundedSemaphore(os.cpu_count() or 2)


def decompress(comp: int, payload: bytes, limit: int) -> bytes:
    """Decompress a section payload of at most ``limit`` uncompressed bytes."""
    if comp == NONE:
        return bytes(payload)
    if comp not in DECODABLE:
        raise UnsupportedError(f"unsupported compression: {name(comp)}")
    size = announced(comp, payload, limit)
    with _DECODERS:
        out = _decode(comp, payload, size, limit)
    if size >= 0 and len(out) != size:  # lzma announces no size: -1
        raise ImageError(f"{name(comp)}: size mismatch ({len(out)} != {size})")
    return out


def _decode(comp: int, payload: bytes, size: int, limit: int) -> bytes:
    try:
        if comp == ZSTD:
            import zstandard

            try:
                return zstandard.ZstdDecompressor().decompress(payload, max_output_size=size)
            except zstandard.ZstdError as e:
                raise ValueError(e) from None
        if comp in (LZ4, LZ4HC):
            import lz4.block

            return lz4.block.decompress(payload)
        if comp == BROTLI:
            return _brotli(payload, size)
        return _lzma(payload, limit)
    except ImageError:
        raise
    except (ValueError, RuntimeError, MemoryError) as e:
        raise ImageError(f"{name(comp)}: corrupt data ({e})") from None


def _lzma(payload: bytes, limit: int) -> bytes:
    import lzma

    d = lzma.LZMADecompressor()
    try:
        out = d.decompress(payload, max_length=limit + 1)
    except lzma.LZMAError as e:
        raise ValueError(e) from None
    if len(out) > limit:
        raise ImageError(f"lzma: uncompressed size exceeds limit {limit}")
    if not d.eof:
        raise ImageError("lzma: truncated stream")
    return out


def _brotli(payload: bytes, size: int) -> bytes:
    import brotli

    n = _uleb128(payload)[1]
    d = brotli.Decompressor()
    try:
        out = d.process(bytes(payload[n:]), output_buffer_limit=size + 1)
    except brotli.error as e:
        raise ValueError(e) from None
    if len(out) > size or not d.is_finished():
        # mkdwarfs may use the large-window extension, which this module cannot decode
        raise UnsupportedError("brotli: stream not decodable (large window?)")
    return out


def compress(comp: int, data: bytes, level: int | None = None) -> bytes:
    """Compress ``data`` with the framing DwarFS expects (content size included)."""
    if comp == NONE:
        return bytes(data)
    if comp == ZSTD:
        import zstandard

        return zstandard.ZstdCompressor(level=level if level is not None else 19,
                                        write_content_size=True).compress(data)
    if comp in (LZ4, LZ4HC):
        import lz4.block

        if comp == LZ4:
            return lz4.block.compress(data)
        return lz4.block.compress(data, mode="high_compression",
                                  compression=level if level is not None else 9)
    if comp == LZMA:
        import lzma

        preset = level if level is not None else 9
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=preset)
    if comp == BROTLI:
        import brotli

        quality = level if level is not None else 11
        return uleb128(len(data)) + brotli.compress(data, quality=quality, lgwin=22)
    raise UnsupportedError(f"cannot compress with {name(comp)}")
