"""Writer options: the mkdwarfs level table, codec specs, and :class:`WriteOptions`."""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import codecs

MIN_BLOCK_BITS, MAX_BLOCK_BITS = 10, 30
ORDERS = ("path", "similarity")
_CODEC_ALIASES = {"null": codecs.NONE, "none": codecs.NONE}
_SUBSECOND = {"ms": 1_000_000, "us": 1_000, "ns": 1}
_SECONDS = {"sec": 1, "min": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class Codec:
    """A section compression: codec id and level (None: the codec's default)."""

    id: int
    level: int | None = None

    def __str__(self) -> str:
        name = "null" if self.id == codecs.NONE else codecs.name(self.id)
        return name if self.level is None else f"{name}:level={self.level}"


def parse_codec(text: str) -> Codec:
    """``CODEC[:level=N]`` as mkdwarfs spells it: null, lz4, lz4hc, zstd, lzma, brotli."""
    name, _, rest = text.strip().lower().partition(":")
    comp = _CODEC_ALIASES.get(name, codecs.BY_NAME.get(name))
    if comp is None or comp not in codecs.DECODABLE:
        raise ValueError(f"unknown compression {name!r} "
                         "(known: null, lz4, lz4hc, zstd, lzma, brotli)")
    level = None
    for item in filter(None, rest.split(":")):
        key, _, value = item.partition("=")
        if key not in ("level", "quality") or not value.isdigit():
            raise ValueError(f"bad compression option {item!r} (expected level=N)")
        level = int(value)
    if comp == codecs.NONE and level is not None:
        raise ValueError("null compression takes no level")
    return Codec(comp, level)


@dataclass(frozen=True)
class Level:
    block_bits: int
    data: Codec
    schema: Codec
    metadata: Codec
    order: str


_NULL = Codec(codecs.NONE)
_SCHEMA = Codec(codecs.ZSTD, 16)
_LZ4HC = Codec(codecs.LZ4HC, 9)
_ZSTD22 = Codec(codecs.ZSTD, 22)
_LZMA9 = Codec(codecs.LZMA, 9)

#: mkdwarfs' ``-l`` table: block size bits, data / schema / metadata compression,
#: file order (mkdwarfs' "nilsimsa" and "similarity" orders both map to ours).
LEVELS: dict[int, Level] = {
    0: Level(20, _NULL, _NULL, _NULL, "path"),
    1: Level(20, Codec(codecs.LZ4), _SCHEMA, _NULL, "path"),
    2: Level(20, _LZ4HC, _SCHEMA, _NULL, "path"),
    3: Level(21, _LZ4HC, _SCHEMA, _NULL, "similarity"),
    4: Level(22, Codec(codecs.ZSTD, 11), _SCHEMA, _NULL, "similarity"),
    5: Level(23, Codec(codecs.ZSTD, 19), _SCHEMA, _NULL, "similarity"),
    6: Level(24, _ZSTD22, _SCHEMA, _NULL, "similarity"),
    7: Level(24, _ZSTD22, _SCHEMA, _ZSTD22, "similarity"),
    8: Level(24, _LZMA9, _SCHEMA, _LZMA9, "similarity"),
    9: Level(26, _LZMA9, _SCHEMA, _LZMA9, "similarity"),
}
DEFAULT_LEVEL = 7


def parse_time_resolution(text: str) -> tuple[int, int | None]:
    """``sec``/``min``/``hour``/``day``, a number of seconds, or ``ms``/``us``/``ns``:
    (resolution in seconds, nanoseconds per stored sub-second unit or None)."""
    t = text.strip().lower()
    if t in _SUBSECOND:
        return 1, _SUBSECOND[t]
    if t in _SECONDS:
        return _SECONDS[t], None
    if t.isdigit() and int(t) > 0:
        return int(t), None
    raise ValueError(f"invalid time resolution {text!r} (sec, min, hour, day, N, ms, us, ns)")


@dataclass(frozen=True)
class WriteOptions:
    """What ``fim create`` can set; None means "the level's default"."""

    level: int = DEFAULT_LEVEL
    block_size_bits: int | None = None
    compression: Codec | None = None
    order: str | None = None
    header: bytes = b""
    section_index: bool = True
    set_owner: int | None = None
    set_group: int | None = None
    set_time: int | None = None  # seconds since the epoch, for every timestamp
    keep_all_times: bool = False  # store atime and ctime, not only mtime
    time_resolution: int = 1  # seconds
    subsecond_ns: int | None = None  # with resolution 1: ns per stored sub-second unit
    jobs: int = 0  # compression threads; 0: one per CPU

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"compression level must be 0-9, not {self.level}")
        bits = self.block_bits
        if not MIN_BLOCK_BITS <= bits <= MAX_BLOCK_BITS:
            raise ValueError(f"block size bits must be {MIN_BLOCK_BITS}-{MAX_BLOCK_BITS}, "
                             f"not {bits}")
        if self.order is not None and self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}")
        for what, v in (("owner", self.set_owner), ("group", self.set_group)):
            if v is not None and not 0 <= v < 2**32:
                raise ValueError(f"{what} id out of range: {v}")
        if self.set_time is not None and self.set_time < 0:
            raise ValueError("time must not be before 1970")
        if self.time_resolution < 1:
            raise ValueError("time resolution must be at least 1 second")
        if self.subsecond_ns and self.time_resolution != 1:
            raise ValueError("sub-second times need a resolution of 1 second")
        if self.subsecond_ns not in (None, *_SUBSECOND.values()):
            raise ValueError(f"bad sub-second unit {self.subsecond_ns}")
        if self.jobs < 0:
            raise ValueError("jobs must not be negative")

    @property
    def block_bits(self) -> int:
        if self.block_size_bits is None:
            return LEVELS[self.level].block_bits
        return self.block_size_bits

    @property
    def data_codec(self) -> Codec:
        return self.compression or LEVELS[self.level].data

    @property
    def file_order(self) -> str:
        return self.order or LEVELS[self.level].order

    @property
    def threads(self) -> int:
        return self.jobs or os.cpu_count() or 1
