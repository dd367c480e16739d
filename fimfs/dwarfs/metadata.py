"""Interpretation of decoded DwarFS metadata: inodes, directories, names, chunks.

Format doc section 6. Both metadata layouts are normalised into one model of
*entries* (a name in a directory) and *inodes*:

- modern (>= 2.3, ``dir_entries`` present): entry ``e`` names inode
  ``dir_entries[e].inode_num`` and its attributes are ``inodes[inode]``;
- legacy v2.2 (``dir_entries`` absent): ``inodes`` *is* the list of entries, each
  carrying its own attributes, and ``entry_table_v2_2`` maps inodes to an entry.

Every consistency check of doc 6.10 runs when an image is opened, in the order the
doc gives, before anything large is built, so a hostile image fails with an
:class:`ImageError` instead of a hang or a huge allocation.
"""

from __future__ import annotations

import stat
import struct
from array import array
from bisect import bisect_left
from collections.abc import Iterator

from ..errors import ImageError, UnsupportedError
from ..paths import type_name
from . import fsst
from .frozen_decode import Table, Zeros

KNOWN_FEATURES = frozenset({b"sparsefiles"})
LARGE_HOLE = 0xFFFFFFFF
MAX_NAME, MAX_SYMLINK = 512, 4096
# inode ranks (doc 6.1)
R_DIR, R_LINK, R_REG, R_DEV, R_OTHER = range(5)


#: Python-level failures that a malformed image could still provoke deep inside a
#: decoder; they are reported as ImageError, never leaked to the caller.
CORRUPTION = (IndexError, KeyError, ValueError, struct.error, OverflowError, TypeError,
              MemoryError, RecursionError, ZeroDivisionError)


class MetadataError(ImageError):
    pass


def _rank(mode: int) -> int:
    fmt = stat.S_IFMT(mode)
    if fmt == stat.S_IFDIR:
        return R_DIR
    if fmt == stat.S_IFLNK:
        return R_LINK
    if fmt == stat.S_IFREG:
        return R_REG
    if fmt in (stat.S_IFBLK, stat.S_IFCHR):
        return R_DEV
    if fmt in (stat.S_IFIFO, stat.S_IFSOCK):
        return R_OTHER
    raise MetadataError(f"unknown file type in mode {mode:o}")


def _prefix_sums(deltas, total_check: int | None, what: str) -> array:  # noqa: ANN001
    out = array("Q")
    acc = 0
    for d in deltas:
        acc += d
        out.append(acc)
    if total_check is not None and acc != total_check:
        raise MetadataError(f"packed {what} does not add up")
    return out


class StringTable:
    """Names or symlink targets from a plain list or a compact (optionally FSST) table."""

    def __init__(self, plain: list[bytes], compact: dict | None, limit: int, what: str) -> None:
        if compact is not None and plain:
            raise MetadataError(f"both compact and plain {what} tables populated")
        self.what = what
        if compact is None:
            self._plain(plain, limit)
            return
        index, buf = compact["index"], compact["buffer"]
        if compact["packed_index"]:
            offs = _prefix_sums(index, None, what)
            offs.insert(0, 0)
        else:
            if len(index) == 0:
                raise MetadataError(f"compact {what} index is empty")
            if index[0] != 0 or any(b < a for a, b in zip(index, index[1:])):
                raise MetadataError(f"compact {what} index is not sorted")
            offs = index
        if offs[-1] != len(buf):
            raise MetadataError(f"compact {what} buffer size mismatch")
        if any(b - a > limit for a, b in zip(offs, offs[1:])):
            raise MetadataError(f"compact {what} item too long")
        dec = fsst.Decoder(compact["symtab"]).decode if compact["symtab"] is not None else bytes
        self.items = [dec(buf[a:b]) for a, b in zip(offs, offs[1:])]

    def _plain(self, plain: list[bytes], limit: int) -> None:
        if any(len(s) > limit for s in plain):
            raise MetadataError(f"{self.what} item too long")
        if plain:
            # stored back to back, as the native consistency check demands; an empty
            # first or last string fails it there too (its data pointer is null)
            first, end = getattr(plain, "span", (0, sum(map(len, plain))))
            if not plain[0] or not plain[-1] or end - first != sum(map(len, plain)):
                raise MetadataError(f"plain {self.what} strings are not contiguous")
        self.items = list(plain)

    def __len__(self) -> int:
        return len(self.items)


class Metadata:
    """The validated, normalised metadata of one image."""

    def __init__(self, m: dict, num_blocks: int) -> None:
        self.m = m
        self.warnings: list[str] = []
        feats = set(m["features"] or ())
        unknown = sorted(f.decode(errors="replace") for f in feats - KNOWN_FEATURES)
        if unknown:
            raise UnsupportedError("file system uses the following features unsupported by "
                                   f"this build: {', '.join(unknown)}")
        self.features = sorted(f.decode(errors="replace") for f in feats)
        opts = m["options"]
        self.options = opts
        self.legacy = m["dir_entries"] is None
        self.modes, self.uids, self.gids = m["modes"], m["uids"], m["gids"]
        self.inodes: Table = m["inodes"]
        self.num_blocks = num_blocks
        self.block_size = m["block_size"]
        self._check_sizes()
        self._build_entries()
        self._check_strings()
        self._build_chunks()
        self._build_ranks()
        self._build_directories()
        self._build_times()
        self.nlink_counts: dict[int, int] | None = None
        if not (opts and opts["inodes_have_nlink"]):
            counts: dict[int, int] = {}
            lo, hi = self.file_inode_offset, self.device_inode_offset
            for i in self.ent_inode:
                if lo <= i < hi:
                    counts[i] = counts.get(i, 0) + 1
            self.nlink_counts = counts
        self.size_cache = array("q", [-1]) * max(len(self.chunk_table) - 1, 0)
        self._check_size_cache()

    # -- 6.10 steps 1-2: sizes and index ranges ------------------------------------
    def _check_sizes(self) -> None:
        m, inodes = self.m, self.inodes
        n_inodes = len(inodes)
        if not n_inodes or not len(m["directories"]) or not len(m["chunk_table"]) or \
                not len(self.modes):
            raise MetadataError("metadata has an empty required table")
        entries = len(m["entry_table_v2_2"]) if self.legacy else len(m["dir_entries"])
        if not entries:
            raise MetadataError("metadata has no directory entries")
        if max(len(self.modes), len(self.uids), len(self.gids)) > n_inodes:
            raise MetadataError("mode/uid/gid table larger than the inode table")
        if not self.legacy and n_inodes > entries:
            raise MetadataError("more inodes than directory entries")
        if entries >= 2**32 - 1:
            raise MetadataError("too many directory entries")
        if len(m["directories"]) > n_inodes + 1 or len(m["chunk_table"]) > n_inodes + 1:
            raise MetadataError("directory or chunk table larger than the inode table")
        for col, table, what in ((inodes.mode_index, self.modes, "mode"),
                                 (inodes.owner_index, self.uids, "uid"),
                                 (inodes.group_index, self.gids, "gid")):
            if (len(table) or what == "mode") and max(col, default=0) >= len(table):
                raise MetadataError(f"{what} index out of range")

    def _build_entries(self) -> None:
        m = self.m
        if self.legacy:
            et = m["entry_table_v2_2"]
            n_rec = len(self.inodes)
            if max(et, default=0) >= n_rec:
                raise MetadataError("entry table index out of range")
            self.entry_table = et
            self.ent_name = self.inodes.name_index_v2_2
            self.ent_inode = self.inodes.inode_v2_2
            self.num_inodes = len(et)
            if max(self.ent_inode, default=0) >= self.num_inodes:
                raise MetadataError("entry inode number out of range")
        else:
            de = m["dir_entries"]
            self.ent_name = de.name_index
            self.ent_inode = de.inode_num
            self.num_inodes = len(self.inodes)
            if max(self.ent_inode, default=0) >= self.num_inodes:
                raise MetadataError("dir entry inode number out of range")
        self.num_entries = len(self.ent_inode)

    def record(self, entry: int) -> int:
        """Index into ``inodes`` of the attributes seen through ``entry``."""
        return entry if self.legacy else self.ent_inode[entry]

    def inode_record(self, inode: int) -> int:
        return self.entry_table[inode] if self.legacy else inode

    # -- step 4: strings -------------------------------------------------------------
    def _check_strings(self) -> None:
        m = self.m
        want = max(self.ent_name, default=0) + 1 if self.num_entries > 1 else 0
        self.names = StringTable(m["names"], m["compact_names"], MAX_NAME, "names")
        if len(self.names) != want:
            raise MetadataError(f"wrong number of names ({len(self.names)} != {want})")
        st = m["symlink_table"]
        want = max(st, default=-1) + 1
        self.symlinks = StringTable(m["symlinks"], m["compact_symlinks"], MAX_SYMLINK,
                                    "symlinks")
        if len(self.symlinks) != want:
            raise MetadataError(f"wrong number of symlinks ({len(self.symlinks)} != {want})")
        sep = m["preferred_path_separator"]
        self.separator = b"\\" if sep == 92 else b"/"

    # -- step 3 and 5: chunk table and chunks ---------------------------------------
    def _build_chunks(self) -> None:
        m, opts = self.m, self.options
        chunks: Table = m["chunks"]
        self.chunks = chunks
        ct = m["chunk_table"]
        if opts and opts["packed_chunk_table"]:
            ct = _prefix_sums(ct, len(chunks), "chunk table")
        else:
            if any(b < a for a, b in zip(ct, ct[1:])) or ct[-1] != len(chunks):
                raise MetadataError("chunk table is not sorted or does not end at the chunks")
        if ct[0] > len(chunks):
            raise MetadataError("chunk table out of range")
        self.chunk_table = ct
        bs = self.block_size
        if bs <= 0 or bs & (bs - 1):
            raise MetadataError(f"block size {bs} is not a power of two")
        hole = m["hole_block_index"]
        if (hole is not None) != ("sparsefiles" in self.features):
            raise MetadataError("hole_block_index and the sparsefiles feature disagree")
        self.hole_block = hole
        large = m["large_hole_size"]
        self.large_holes = large if large is not None else array("Q")
        for b, off, size in zip(chunks.block, chunks.offset, chunks.size):
            if b == hole:
                if off == LARGE_HOLE:
                    if size >= len(self.large_holes):
                        raise MetadataError("large hole index out of range")
                elif off >= bs:
                    raise MetadataError("hole chunk offset out of range")
            elif off >= bs or size > bs or off + size > bs:
                raise MetadataError("chunk outside its block")
            elif b >= self.num_blocks:
                raise MetadataError(f"chunk refers to missing block {b}")

    # -- step 6: ranks and the partitioning -----------------------------------------
    def _build_ranks(self) -> None:  # noqa: C901, PLR0912, PLR0915 - the checks of format doc 6, in its order
        m = self.m
        mode_index = self.inodes.mode_index
        modes = self.modes
        ranks = [_rank(mode) for mode in modes]
        offsets = [0] * 6
        prev = 0
        for i in range(self.num_inodes):
            r = ranks[mode_index[self.inode_record(i)]]
            if r < prev:
                raise MetadataError("inodes are not ordered by type")
            while prev < r:
                prev += 1
                offsets[prev] = i
        while prev < 5:
            prev += 1
            offsets[prev] = self.num_inodes
        self.rank_of_mode = ranks
        self.dir_count = self.symlink_inode_offset = offsets[R_LINK]
        self.file_inode_offset = offsets[R_REG]
        self.device_inode_offset = offsets[R_DEV]
        self.other_inode_offset = offsets[R_OTHER]
        if len(m["directories"]) - 1 != self.dir_count:
            raise MetadataError("directory table does not match the directory inodes")
        if len(m["symlink_table"]) != self.file_inode_offset - self.symlink_inode_offset:
            raise MetadataError("symlink table does not match the symlink inodes")
        sft = m["shared_files_table"] or array("I")
        opts = self.options
        if opts and opts["packed_shared_files_table"]:
            shared = array("I")
            for g, extra in enumerate(sft):
                if extra > self.num_inodes:
                    raise MetadataError("shared files table out of range")
                shared.extend([g] * (extra + 2))
            groups = len(sft)
        else:
            if any(b < a for a, b in zip(sft, sft[1:])):
                raise MetadataError("shared files table is not sorted")
            shared = sft
            groups = sft[-1] + 1 if len(sft) else 0
        unique = len(self.chunk_table) - 1 - groups
        n_reg = self.device_inode_offset - self.file_inode_offset
        if unique < 0 or unique + len(shared) != n_reg:
            raise MetadataError("chunk table does not match the regular file inodes")
        self.shared = shared
        self.unique_files = unique
        devices = m["devices"]
        n_dev = self.other_inode_offset - self.device_inode_offset
        if len(devices or ()) != n_dev:
            raise MetadataError("device table does not match the device inodes")
        self.devices = devices
        if self.legacy:
            # each entry's inode must lie in the range of its own mode's rank
            bounds = offsets[:5] + [self.num_inodes]
            for e in range(self.num_entries):
                r = ranks[mode_index[e]]
                lo, hi = bounds[r], bounds[r + 1]
                i = self.ent_inode[e]
                if not (lo <= i < hi or i == lo == hi):
                    raise MetadataError("entry inode number outside its type's range")

    # -- directories -------------------------------------------------------------------
    def _build_directories(self) -> None:  # noqa: C901, PLR0912 - the checks of format doc 6, in its order
        dirs: Table = self.m["directories"]
        n = self.num_entries
        nd = self.dir_count
        opts = self.options
        if opts and opts["packed_directories"]:
            if any(dirs.parent_entry) or any(dirs.self_entry):
                raise MetadataError("packed directories with parent or self entries")
            first = _prefix_sums(dirs.first_entry, n, "directories")
            parent = self._recover_parents(first)
        else:
            first = dirs.first_entry  # type: ignore[assignment]  # read-only use; Zeros is a sequence
            parent = dirs.parent_entry  # type: ignore[assignment]  # read-only use; Zeros is a sequence
            if any(b < a for a, b in zip(first, first[1:])):
                raise MetadataError("directory first_entry not sorted")
            for d in range(nd + 1):
                f, p, s = first[d], parent[d], dirs.self_entry[d]
                if f > n or s > n or p >= n or f == p:
                    raise MetadataError("directory entry index out of range")
            if self.legacy:
                if max(parent, default=0) >= self.num_inodes:
                    raise MetadataError("directory parent out of range")
                parent = array("I", (self.entry_table[p] for p in parent))
            elif parent[0] != 0 or parent[nd] != 0:
                raise MetadataError("root or sentinel directory has a parent")
        if first[nd] != n:
            raise MetadataError("directory table does not cover all entries")
        self.dir_first = first
        self.dir_parent = parent
        if self.legacy:
            self.dir_self = array("I", (self.entry_table[d] for d in range(nd)))
        elif "self_entry" in dirs.present and nd > 1:
            self_e = dirs.self_entry
            if self_e[0] != 0:
                raise MetadataError("root directory has a self entry")
            if self_e[nd]:
                self.warnings.append(
                    f"self_entry for sentinel directory should be 0, but is {self_e[nd]}, "
                    "this is harmless and can be fixed by rebuilding the metadata")
            for d in range(1, nd):
                if first[d] == self_e[d] or self_e[d] == parent[d]:
                    raise MetadataError("directory self entry inconsistent")
                if self.ent_inode[self_e[d]] != d:
                    raise MetadataError("directory self entry points elsewhere")
            self.dir_self = self_e  # type: ignore[assignment]  # read-only use; Zeros is a sequence
        else:
            self.dir_self = self._recover_self()
        self._check_tree()
        self._check_names()

    def _check_names(self) -> None:
        """Names are usable path components, unique and byte-sorted in each directory.

        Stricter than the native checker: lookups binary-search, and names reach host
        paths (FUSE, extraction), so a name with '/' or a duplicate is refused here."""
        for name in self.names.items:
            if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
                raise MetadataError(f"invalid file name {name!r}")
        names, ent_name, first = self.names.items, self.ent_name, self.dir_first
        for d in range(self.dir_count):
            prev = None
            for e in range(first[d], first[d + 1]):
                cur = names[ent_name[e]]
                if prev is not None and cur <= prev:
                    raise MetadataError("directory entries are not sorted by name")
                prev = cur

    def _recover_parents(self, first: array) -> array:
        parent = array("I", [0]) * (self.dir_count + 1)
        seen = bytearray(self.dir_count)
        queue = [0]
        seen[0] = 1
        head = 0
        while head < len(queue):
            p = queue[head]
            head += 1
            ino = self.ent_inode[p]
            for e in range(first[ino], first[ino + 1]):
                c = self.ent_inode[e]
                if c < self.dir_count:
                    if seen[c]:
                        raise MetadataError("directory cycle or directory hard link")
                    seen[c] = 1
                    parent[c] = p
                    queue.append(e)
        return parent

    def _recover_self(self) -> array:
        nd = self.dir_count
        out = array("I", [0]) * (nd + 1)
        found = bytearray(nd)
        found[0] = 1
        for e in range(1, self.num_entries):
            i = self.ent_inode[e]
            if i < nd:
                if found[i]:
                    raise MetadataError("directory with more than one entry")
                found[i] = 1
                out[i] = e
        if not all(found):
            raise MetadataError("could not recover all self entries")
        return out

    def _check_tree(self) -> None:
        """Every directory is reached once from the root: no cycles, bounded depth."""
        nd = self.dir_count
        if self.ent_inode[0] != 0:
            raise MetadataError("root entry does not name the root inode")
        visited = bytearray(nd)
        visited[0] = 1
        stack = [0]
        while stack:
            d = stack.pop()
            for e in range(self.dir_first[d], self.dir_first[d + 1]):
                c = self.ent_inode[e]
                if c < nd:
                    if visited[c]:
                        raise MetadataError("cycle detected during directory walk")
                    visited[c] = 1
                    stack.append(c)

    def _build_times(self) -> None:
        opts = self.options
        res = (opts["time_resolution_sec"] or 1) if opts else 1
        self.time_res_ns = res * 1_000_000_000
        mult = opts["subsecond_resolution_nsec_multiplier"] if opts else None
        self.subsec_mult = mult or 0
        self.mtime_only = bool(opts and opts["mtime_only"])
        self.time_base = self.m["timestamp_base"]

    def _check_size_cache(self) -> None:
        cache = self.m["reg_file_size_cache"]
        if cache is None:
            return
        ct = self.chunk_table
        for k, size in cache["size_lookup"].items():
            if k + 1 >= len(ct):
                raise MetadataError("size cache index out of range")
            if ct[k + 1] - ct[k] < cache["min_chunk_count"]:
                raise MetadataError("size cache entry for a file with few chunks")
            if self.file_size(k) != size:
                raise MetadataError("size cache entry does not match the chunks")

    # -- queries ---------------------------------------------------------------------
    def mode_of(self, entry: int) -> int:
        return self.modes[self.inodes.mode_index[self.record(entry)]]

    def name(self, entry: int) -> bytes:
        return self.names.items[self.ent_name[entry]] if entry else b""

    def children(self, d: int) -> range:
        """Entry indices of the entries of directory inode ``d``."""
        return range(self.dir_first[d], self.dir_first[d + 1])

    def find(self, dir_inode: int, name: bytes) -> int | None:
        """Entry index of ``name`` in directory ``dir_inode`` (binary search, byte order)."""
        lo, hi = self.dir_first[dir_inode], self.dir_first[dir_inode + 1]
        names, ent_name = self.names.items, self.ent_name
        pos = bisect_left(range(lo, hi), name, key=lambda e: names[ent_name[e]])
        e = lo + pos
        return e if e < hi and names[ent_name[e]] == name else None

    def lookup(self, parts: list[bytes]) -> int:
        """Entry index of a path given as components; raises KeyError/NotADirectoryError."""
        e = 0
        for part in parts:
            ino = self.ent_inode[e]
            if ino >= self.dir_count:
                raise NotADirectoryError
            nxt = self.find(ino, part)
            if nxt is None:
                raise KeyError(part)
            e = nxt
        return e

    def chunk_index(self, inode: int) -> int:
        """Chunk-table index of a regular-file inode (doc 6.4)."""
        k = inode - self.file_inode_offset
        if k >= self.unique_files:
            k = self.unique_files + self.shared[k - self.unique_files]
        return k

    def hole_size(self, offset: int, size: int) -> int:
        if offset == LARGE_HOLE:
            return self.large_holes[size]
        return size * self.block_size + offset

    def file_chunks(self, k: int) -> Iterator[tuple[int, int, int]]:
        """(block or -1 for a hole, offset in block, length) of chunk-table index ``k``."""
        c = self.chunks
        blocks, offsets, sizes = c.block, c.offset, c.size
        hole = self.hole_block
        for j in range(self.chunk_table[k], self.chunk_table[k + 1]):
            b, off, size = blocks[j], offsets[j], sizes[j]
            if b == hole:
                yield -1, 0, self.hole_size(off, size)
            else:
                yield b, off, size

    def first_block(self, inode: int) -> int | None:
        """The block a regular file's data starts in (None: not a regular file, empty,
        or starting with a hole)."""
        if not self.file_inode_offset <= inode < self.device_inode_offset:
            return None
        k = self.chunk_index(inode)
        j = self.chunk_table[k]
        if j >= self.chunk_table[k + 1]:
            return None
        b = self.chunks.block[j]
        return None if b == self.hole_block else b

    def file_size(self, k: int) -> int:
        size = self.size_cache[k]
        if size < 0:
            size = sum(n for _, _, n in self.file_chunks(k))
            self.size_cache[k] = size
        return size

    def allocated_size(self, k: int) -> int:
        return sum(n for b, _, n in self.file_chunks(k) if b >= 0)

    def symlink_target(self, inode: int) -> bytes:
        return self.symlinks.items[self.m["symlink_table"][inode - self.symlink_inode_offset]]

    def nlink(self, inode: int, rec: int) -> int:
        if not self.file_inode_offset <= inode < self.device_inode_offset:
            return 1
        if self.nlink_counts is None:
            return self.inodes.nlink_minus_one[rec] + 1
        return self.nlink_counts.get(inode, 1)

    def times_ns(self, rec: int) -> tuple[int, int, int]:
        """(atime, mtime, ctime) in ns of an inode record."""
        ino = self.inodes
        res, base, mult = self.time_res_ns, self.time_base, self.subsec_mult
        m = (base + ino.mtime_offset[rec]) * res + ino.mtime_subsec[rec] * mult
        if self.mtime_only:
            return m, m, m
        a = (base + ino.atime_offset[rec]) * res + ino.atime_subsec[rec] * mult
        c = (base + ino.ctime_offset[rec]) * res + ino.ctime_subsec[rec] * mult
        return a, m, c

    def owner(self, rec: int) -> tuple[int, int]:
        ino = self.inodes
        u, g = ino.owner_index[rec], ino.group_index[rec]
        return (self.uids[u] if len(self.uids) else u, self.gids[g] if len(self.gids) else g)



__all__ = ["CORRUPTION", "Metadata", "MetadataError", "StringTable", "Zeros", "type_name"]
