"""The DwarFS format in pure Python: a reader and a writer ("format doc": see docs/architecture.md).

The public surface is small: :class:`DwarfsImage` (``DwarfsImage.from_path(path)``, a
read-only :class:`fimfs.vfs.Filesystem`) and, for writing,
:func:`fimfs.dwarfs.writer.write_image` with :class:`fimfs.dwarfs.options.WriteOptions`.
Everything else is internal. The modules, by side (docs/architecture.md has the data
path of one read through them):

Read side
    ``reader``         DwarfsImage: opening, and the Filesystem over the parts below
    ``inodes``         the inode reader: path lookups (cached), chunk mapping, read-ahead
    ``blockcache``     the block cache and its prefetch workers
    ``inspect``        dwarfsck's part: the tree walk, ``fim info``, integrity check
    ``metadata``       the decoded metadata as inodes, directories, names and chunks
    ``frozen_decode``  Frozen2: the bit-packed metadata, decoded under its schema
    ``fsst``           FSST-compressed string tables (names, symlink targets)
    ``zstdstream``     zstd blocks decoded progressively, only as far as read (libzstd)
    ``lookahead``      the tree order the prefetch follows (what tar reads next)

Write side
    ``writer``         write_image: scan, order, pack, freeze, write (the mkdwarfs of fim)
    ``options``        WriteOptions and the mkdwarfs level table
    ``scan``           the source tree: entries, attributes, hard links
    ``filedata``       file contents: de-duplication, ordering, reading into blocks
    ``blocks``         blocks compressed in worker threads, written in order
    ``metabuild``      the metadata value of a written tree
    ``frozen_encode``  Frozen2: laying out and freezing that value (the inverse of
                       ``frozen_decode``)

Both sides
    ``sections``       sections: headers, image offset detection, index, checksums
    ``codecs``         section compression (none, lzma, zstd, lz4, lz4hc, brotli)
    ``thrift``         the thrift compact protocol (schema, history)
    ``idl``            the DwarFS Thrift IDL as data
"""

from .reader import DEFAULT_CACHE_BYTES, DwarfsImage

__all__ = ["DEFAULT_CACHE_BYTES", "DwarfsImage"]
