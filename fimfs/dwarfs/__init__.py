"""The DwarFS format in pure Python: reader (and writer), see docs/dwarfs-format.md."""

from .reader import DEFAULT_CACHE_BYTES, DwarfsImage

__all__ = ["DEFAULT_CACHE_BYTES", "DwarfsImage"]
