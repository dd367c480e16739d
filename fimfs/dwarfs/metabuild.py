"""The metadata value of a written tree (format doc 5, 6 and the checklist of 8.2).

Inodes are numbered by rank as the reader requires: directories in pre-order
(root 0), then symlinks, regular files (unique contents first, then the shared
groups), devices, and FIFOs/sockets, each in tree order. Dir entries follow
directory by directory in inode order, so ``parent < self < first`` holds.
Names and symlink targets go into compact string tables without FSST.
"""

from __future__ import annotations

import stat
from array import array
from itertools import accumulate

from .filedata import HOLE, Chunks, Content
from .frozen_decode import Table
from .options import WriteOptions
from .scan import FileData, Node, Tree, preorder

_LARGE_HOLE = 0xFFFFFFFF
_NS = 10**9


def _table(columns: dict[str, array]) -> Table:
    n = len(next(iter(columns.values())))
    return Table(n, columns, frozenset(columns))  # type: ignore[arg-type]  # Table only reads its columns


def _strings(items: list[bytes]) -> dict:
    return {"buffer": b"".join(items), "symtab": None, "packed_index": False,
            "index": array("I", accumulate((len(s) for s in items), initial=0))}


def _index(values: list[int]) -> tuple[array, array]:
    """(sorted distinct values, index of each value in them)."""
    table = sorted(set(values))
    pos = {v: i for i, v in enumerate(table)}
    return array("Q", table), array("I", [pos[v] for v in values])


class _Times:
    """Timestamps as stored: units of the resolution, plus sub-second parts."""

    def __init__(self, opts: WriteOptions) -> None:
        self.res = opts.time_resolution
        self.sub = opts.subsecond_ns
        self.fixed = None if opts.set_time is None else opts.set_time * _NS

    def split(self, ns: list[int]) -> tuple[list[int], list[int]]:
        units, subs = [], []
        for t in ns:
            t = max(t if self.fixed is None else self.fixed, 0)  # before 1970: clamped
            s, frac = divmod(t, _NS)
            units.append(s // self.res)
            subs.append(frac // self.sub if self.sub else 0)
        return units, subs


def _ranked(tree: Tree, contents: list[Content]
            ) -> tuple[list[Node], list[Node], list[FileData], list[Node], list[Node],
                       dict[int, Node]]:
    dirs, links, devices, others = [], [], [], []
    first: dict[int, Node] = {}  # FileData id -> its first link in tree order
    for n in preorder(tree.root):
        fmt = stat.S_IFMT(n.mode)
        if fmt == stat.S_IFDIR:
            dirs.append(n)
        elif fmt == stat.S_IFLNK:
            links.append(n)
        elif fmt == stat.S_IFREG:
            first.setdefault(id(n.data), n)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            devices.append(n)
        else:  # FIFOs and sockets, the only other types Linux has
            others.append(n)
    files = [c.rep for c in contents if len(c.files) == 1]
    files += [f for c in contents if len(c.files) > 1 for f in c.files]
    return dirs, links, files, devices, others, first


def build(tree: Tree, contents: list[Content], chunks: Chunks, num_blocks: int,
          opts: WriteOptions, version: str) -> dict:
    """The ``metadata`` struct (as :mod:`fimfs.dwarfs.frozen_encode` takes it)."""
    dirs, links, files, devices, others, first = _ranked(tree, contents)
    ino: dict[int, int] = {}
    for i, n in enumerate(dirs + links):
        ino[id(n)] = i
    base = len(dirs) + len(links)
    for i, f in enumerate(files):
        ino[id(f)] = base + i
    base += len(files)
    for i, n in enumerate(devices + others):
        ino[id(n)] = base + i
    nodes = dirs + links + [first[id(f)] for f in files] + devices + others

    m: dict = {"block_size": 1 << opts.block_bits, "preferred_path_separator": ord("/"),
               "dwarfs_version": version.encode()}
    m.update(_entries(dirs, ino))
    m.update(_inodes(nodes, files, len(dirs) + len(links), opts))
    m.update(_file_chunks(contents, chunks, num_blocks, opts.block_bits))
    targets = sorted({n.target for n in links})  # type: ignore[type-var]  # links: target is set
    where = {t: i for i, t in enumerate(targets)}
    m["symlink_table"] = array("I", [where[n.target] for n in links])
    m["compact_symlinks"] = _strings(targets)  # type: ignore[arg-type]  # links: target is set
    m["devices"] = array("Q", [n.rdev for n in devices]) if devices else None
    link_bytes = sum(len(n.target) for n in links)  # type: ignore[misc, arg-type]  # links: target is set
    m["total_fs_size"] = link_bytes + sum(f.size for f in files)
    m["total_hardlink_size"] = sum(f.size * (f.links - 1) for f in files)
    if m["hole_block_index"] is not None:
        holes = {id(f): c.hole_bytes for c in contents for f in c.files}
        m["total_allocated_fs_size"] = link_bytes + sum(f.size - holes[id(f)] for f in files)
    return m


def _entries(dirs: list[Node], ino: dict[int, int]) -> dict:
    names = sorted({c.name for d in dirs for c in d.children})  # type: ignore[union-attr]  # dirs: children is a list
    where = {name: i for i, name in enumerate(names)}
    ent_name, ent_ino = array("I", [0]), array("I", [0])
    n = len(dirs)
    parent, self_entry, first = array("I", [0]) * (n + 1), array("I", [0]) * (n + 1), array("I")
    for d_ino, d in enumerate(dirs):
        first.append(len(ent_ino))
        for c in d.children:  # type: ignore[union-attr]  # dirs: children is a list
            if c.children is not None:
                c_ino = ino[id(c)]
                self_entry[c_ino] = len(ent_ino)
                parent[c_ino] = self_entry[d_ino]
            ent_name.append(where[c.name])
            ent_ino.append(ino[id(c.data) if c.data else id(c)])
    first.append(len(ent_ino))
    return {"dir_entries": _table({"name_index": ent_name, "inode_num": ent_ino}),
            "directories": _table({"parent_entry": parent, "first_entry": first,
                                   "self_entry": self_entry}),
            "compact_names": _strings(names)}


def _inodes(nodes: list[Node], files: list[FileData], first_file: int,
            opts: WriteOptions) -> dict:
    modes, mode_index = _index([n.mode for n in nodes])
    uids, owner = _index([n.uid if opts.set_owner is None else opts.set_owner for n in nodes])
    gids, group = _index([n.gid if opts.set_group is None else opts.set_group for n in nodes])
    cols = {"mode_index": mode_index, "owner_index": owner, "group_index": group}
    times = _Times(opts)
    kinds = ("atime", "mtime", "ctime") if opts.keep_all_times else ("mtime",)
    split = {k: times.split([getattr(n, f"{k}_ns") for n in nodes]) for k in kinds}
    base = min(min(units) for units, _ in split.values())
    for k, (units, subs) in split.items():
        cols[f"{k}_offset"] = array("Q", [t - base for t in units])
        if opts.subsecond_ns:
            cols[f"{k}_subsec"] = array("Q", subs)
    nlink = array("I", [0]) * len(nodes)
    for i, f in enumerate(files, first_file):
        nlink[i] = f.links - 1
    cols["nlink_minus_one"] = nlink
    return {"inodes": _table(cols), "modes": modes, "uids": uids, "gids": gids,
            "timestamp_base": base,
            "options": {"mtime_only": not opts.keep_all_times,
                        "time_resolution_sec": opts.time_resolution
                        if opts.time_resolution > 1 else None,
                        "subsecond_resolution_nsec_multiplier": opts.subsecond_ns,
                        "inodes_have_nlink": True}}


def _file_chunks(contents: list[Content], chunks: Chunks, num_blocks: int,
                 block_bits: int) -> dict:
    """Chunk table and chunks in chunk-table order, holes encoded (doc 7.3)."""
    order = [c for c in contents if len(c.files) == 1] + [c for c in contents if len(c.files) > 1]
    blk, off, size = array("I"), array("I"), array("I")
    table = array("I", [0])
    for c in order:
        s, e = c.first_chunk, c.end_chunk
        blk += chunks.block[s:e]
        off += chunks.offset[s:e]
        size += chunks.size[s:e]
        table.append(len(blk))
    shared = array("I")
    for g, c in enumerate(c for c in contents if len(c.files) > 1):
        shared += array("I", [g]) * len(c.files)
    out: dict[str, object] = {"chunk_table": table, "shared_files_table": shared,
                              "hole_block_index": None,
           "features": []}
    if chunks.holes:
        _encode_holes(blk, off, size, chunks.holes, num_blocks, block_bits, out)
    out["chunks"] = _table({"block": blk, "offset": off, "size": size})
    return out


def _encode_holes(blk: array, off: array, size: array, holes: list[int], num_blocks: int,
                  block_bits: int, out: dict) -> None:
    """Holes narrower than the data chunk sizes are stored inline as (size / block size,
    size % block size); wider ones go to ``large_hole_size`` (as mkdwarfs does)."""
    widest = max((s for b, s in zip(blk, size) if b != HOLE), default=0)
    limit = 1 << (widest.bit_length() + block_bits)
    mask = (1 << block_bits) - 1
    large: dict[int, int] = {}
    for i, b in enumerate(blk):
        if b != HOLE:
            continue
        h = holes[size[i]]
        blk[i] = num_blocks
        if h < limit:
            off[i], size[i] = h & mask, h >> block_bits
        else:
            off[i], size[i] = _LARGE_HOLE, large.setdefault(h, len(large))
    out.update(hole_block_index=num_blocks, large_hole_size=array("Q", large),
               features=[b"sparsefiles"])
