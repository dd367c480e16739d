"""Inspection of an open DwarFS image, as ``dwarfsck`` does: the tree in order, the
description ``fim info`` prints, the history sections, and an integrity check."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator

from ..errors import ImageError
from ..paths import type_name
from . import codecs, idl, sections, thrift
from .blockcache import BlockCache
from .metadata import CORRUPTION, Metadata

log = logging.getLogger(__name__)

#: The largest history section decompressed (as a schema section).
HISTORY_LIMIT = 16 << 20


def walk(m: Metadata) -> Iterator[tuple[str, int]]:
    """Every entry in depth-first order as ``(path, entry)``; the root is "/"."""
    stack = [("/", 0)]
    while stack:
        path, e = stack.pop()
        yield path, e
        ino = m.ent_inode[e]
        if ino < m.dir_count:
            prefix = path if path.endswith("/") else path + "/"
            kids = [(prefix + os.fsdecode(m.name(c)), c) for c in m.children(ino)]
            stack.extend(reversed(kids))


def history(f: sections.Source, layout: sections.Layout, path: str) -> list[dict]:
    """Entries of the HISTORY sections (informational; undecodable ones are skipped)."""
    out: list = []
    for s in layout.sections:
        if s.type != sections.HISTORY:
            continue
        try:
            raw = codecs.decompress(s.compression, sections.read_payload(f, s), HISTORY_LIMIT)
            out.extend(_plain(e) for e in thrift.decode(raw, idl.HISTORY).get("entries", []))
        except (ImageError, *CORRUPTION) as e:
            log.warning("%s: ignoring corrupt history section: %s", path, e)
    return out


def counts_by_type(m: Metadata) -> dict[str, int]:
    """How many inodes of each type (``fimfs.paths.type_name``)."""
    out: dict[str, int] = {}
    for i in range(m.num_inodes):
        kind = type_name(m.modes[m.inodes.mode_index[m.inode_record(i)]])
        out[kind] = out.get(kind, 0) + 1
    return out


def info(m: Metadata, lay: sections.Layout, f: sections.Source, cache: BlockCache,
         path: str) -> dict:
    """A JSON-serialisable description of the image (``fim info``)."""
    secs = [sections.resolve(f, s) for s in lay.sections]
    codec_counts = Counter(codecs.name(s.compression) for s in secs
                           if s.type == sections.BLOCK)
    md = m.m
    opts = md["options"] or {}
    return {
        "path": path,
        "format_version": f"{lay.major}.{lay.minor}",
        "image_offset": lay.offset,
        "image_size": lay.end - lay.offset,
        "section_index": lay.indexed,
        "sections": [{"number": s.number, "type": sections.type_name(s.type),
                      "compression": codecs.name(s.compression),
                      "offset": s.offset - lay.offset, "length": s.length} for s in secs],
        "blocks": {"count": len(cache.sections), "block_size": m.block_size,
                   "codecs": dict(sorted(codec_counts.items()))},
        "total_fs_size": md["total_fs_size"],
        "total_hardlink_size": md["total_hardlink_size"],
        "total_allocated_fs_size": md["total_allocated_fs_size"],
        "inodes": m.num_inodes,
        "entries": m.num_entries,
        "inodes_by_type": counts_by_type(m),
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
        "history": history(f, lay, path),
    }


def check(m: Metadata, lay: sections.Layout, f: sections.Source, cache: BlockCache,
          full: bool = False) -> list[str]:
    """Integrity problems (empty: sound). Checks every section checksum (XXH3, and
    SHA-512/256 with ``full``) and that every chunk of every file is readable."""
    problems = []
    for s in lay.sections:
        try:
            s = sections.resolve(f, s)
            where = f"section {s.number if s.number is not None else '?'} " \
                    f"({sections.type_name(s.type)}) at offset {s.offset - lay.offset}"
            if not sections.verify_xxh3(f, s):
                problems.append(f"{where}: XXH3 checksum mismatch")
            elif full and not sections.verify_sha(f, s):
                problems.append(f"{where}: SHA-512/256 checksum mismatch")
        except ImageError as e:
            problems.append(str(e))
    lengths = {}
    for n in range(len(cache.sections)):
        try:
            lengths[n] = len(cache.block(n))
        except OSError:
            problems.append(f"block {n}: {cache.bad.get(n, 'unreadable')}")
    for k in range(len(m.chunk_table) - 1):
        for block, off, size in m.file_chunks(k):
            if block >= 0 and block in lengths and off + size > lengths[block]:
                problems.append(f"chunk of file #{k} extends beyond block {block}")
                break
    return problems


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
