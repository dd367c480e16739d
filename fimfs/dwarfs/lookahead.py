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
        self._last = -1  # the position of the previous open

    def needs_after(self, ino: int) -> dict[int, int]:
        """Block -> the offset up to which the files after inode ``ino`` need it, in the
        order they need them; only the files not looked at yet in this pass through the
        tree (each file is looked at once per pass, so an open costs O(1) on average).
        Nothing unless this open continues a pass: a file at most STRIDE files after the
        one opened before, or the first file of the tree (a program that opens files in
        another order gets no decompression it will not use)."""
        m = self._meta
        k = ino - m.file_inode_offset
        if not 0 <= k < len(self._position) or self._position[k] < 0:
            return {}
        p = self._position[k]
        last, self._last = self._last, p
        if not 0 < p - last <= STRIDE:  # not going through the tree (or a new start)
            self._ahead = p + 1
            if p != 0:
                return {}
        needs: dict[int, int] = {}
        stop = min(len(self._order), p + 1 + FILES)
        q, budget = max(self._ahead, p + 1), BYTES
        while q < stop and budget > 0:
            for block, offset, size in m.file_chunks(m.chunk_index(self._order[q])):
                if block >= 0:
                    needs[block] = max(needs.get(block, 0), offset + size)
                    budget -= size
                    if budget <= 0:
                        break
            q += 1
        self._ahead = max(self._ahead, q)
        return needs
