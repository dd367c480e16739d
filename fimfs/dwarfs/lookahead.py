"""What to decompress ahead of a program going through a tree (tar, cp, rsync, find).

Such a program reads the files in depth-first order of their names, the order in which
the image's directories list them; the image stores their data in another order (by
similarity), so the next files' bytes are spread over several blocks. Where the program
is in the tree order tells which blocks the next files need, and how far into each:
what the prefetch workers decompress while the program reads the current file.
"""

from __future__ import annotations

from array import array

from .metadata import Metadata

#: How many of the files that follow an opened one are looked at, at most ...
FILES = 256
#: ... and how many bytes of their data.
BYTES = 48 << 20
#: How far past the previous open in tree order an open may be and still continue the
#: pass (tar does not open every file: hard links, empty files, replaced ones).
STRIDE = 16
#: Further on, blocks are only read from the image ahead (not decompressed): files ...
READ_FILES = 4 * FILES
#: ... and bytes. A block the decompression reaches then is in the page cache already,
#: where it would otherwise wait for the disk (the image's blocks are read in the
#: tree's order, not the file's: the kernel's own read-ahead cannot guess them).
READ_BYTES = 4 * BYTES


class TreeOrder:
    """The regular files of an image in depth-first name order, and a cursor in it.

    Built once per image (a walk of the metadata: ~10 ms for 10,000 entries). Calls may
    come from several threads: the cursor is a hint, and a race only makes a file be
    looked at twice or not at all."""

    def __init__(self, meta: Metadata) -> None:
        self._meta = meta
        first = meta.file_inode_offset
        order = array("q")
        position = array("q", [-1]) * max(meta.device_inode_offset - first, 0)
        stack = [0]  # the root's entry
        while stack:
            e = stack.pop()
            ino = meta.ent_inode[e]
            if ino < meta.dir_count:
                stack.extend(reversed(meta.children(ino)))
            elif first <= ino < meta.device_inode_offset and position[ino - first] < 0:
                position[ino - first] = len(order)
                order.append(ino)
        self._order, self._position = order, position
        self._ahead = 0  # the first position not looked at yet in this pass
        self._read = 0  # the same for reading blocks ahead
        self._blocks_read: set[int] = set()  # the blocks given to read in this pass
        self._last = -1  # the position of the previous read

    def needs_after(self, ino: int) -> tuple[dict[int, int], list[int]]:
        """What the files after inode ``ino`` need: block -> the offset up to which the
        next ones need it (FILES, BYTES), in the order they need them; then the blocks
        further files need (READ_FILES, READ_BYTES), only to be read, each once a pass.
        Only files not looked at yet in this pass through the tree count (each file is
        looked at once per pass, so a call costs O(1) on average). Nothing unless this
        read continues a pass: a file at most STRIDE files after the one read before, or
        the first file of the tree (a program that reads files in another order gets no
        decompression it will not use)."""
        k = ino - self._meta.file_inode_offset
        if not 0 <= k < len(self._position) or self._position[k] < 0:
            return {}, []
        p = self._position[k]
        last, self._last = self._last, p
        if not 0 < p - last <= STRIDE:  # not going through the tree (or a new start)
            self._ahead = self._read = p + 1
            self._blocks_read.clear()
            if p != 0:
                return {}, []
        needs, self._ahead = self._window(max(self._ahead, p + 1), p + 1 + FILES, BYTES)
        reads, self._read = self._window(max(self._read, self._ahead), p + 1 + READ_FILES,
                                         READ_BYTES)
        fresh = [b for b in reads if b not in needs and b not in self._blocks_read]
        self._blocks_read.update(fresh)
        return needs, fresh

    def _window(self, q: int, stop: int, budget: int) -> tuple[dict[int, int], int]:
        """Block -> end of the chunks it holds for the files from position ``q`` on,
        until ``stop`` or ``budget`` bytes; and the position where that ended."""
        m = self._meta
        needs: dict[int, int] = {}
        stop = min(len(self._order), stop)
        while q < stop and budget > 0:
            for block, offset, size in m.file_chunks(m.chunk_index(self._order[q])):
                if block >= 0:
                    needs[block] = max(needs.get(block, 0), offset + size)
                    budget -= size
                    if budget <= 0:
                        break
            q += 1
        return needs, q
