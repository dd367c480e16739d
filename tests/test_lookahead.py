"""The tree order a prefetch follows (fimfs.dwarfs.lookahead): what `tar` reads next."""

from __future__ import annotations

import pytest

from fim.fimfs.dwarfs import DwarfsImage, lookahead
from fim.fimfs.dwarfs.lookahead import TreeOrder

from .manifest import image_path


def _files_in_walk_order(img: DwarfsImage) -> list[int]:
    """Regular files with data, in the order of DwarfsImage.walk (depth first, by name),
    each inode once (a hard link's first name)."""
    m, out = img.meta, []
    for _, e in img.walk():
        ino = m.ent_inode[e]
        if m.file_inode_offset <= ino < m.device_inode_offset and ino not in out:
            out.append(ino)
    return out


@pytest.mark.parametrize("name", ["default", "small-blocks", "pack-all"])
def test_the_order_is_depth_first_by_name(name: str) -> None:
    with DwarfsImage.from_path(image_path(name)) as img:
        assert list(TreeOrder(img.meta)._order) == _files_in_walk_order(img)


def test_each_file_is_looked_at_once_per_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opens in tree order each get the needs of files no earlier open looked at; an open
    back at the start is a new pass; opens out of order get nothing; the needs are the
    chunks' ends, per block."""
    monkeypatch.setattr(lookahead, "FILES", 5)
    with DwarfsImage.from_path(image_path("small-blocks")) as img:
        m = img.meta
        order = _files_in_walk_order(img)
        t = TreeOrder(m)

        def expected(inos: list[int]) -> dict[int, int]:
            out: dict[int, int] = {}
            for ino in inos:
                for block, offset, size in m.file_chunks(m.chunk_index(ino)):
                    if block >= 0:
                        out[block] = max(out.get(block, 0), offset + size)
            return out

        def needs(ino: int) -> dict[int, int]:
            return t.needs_after(ino)[0]

        assert needs(order[0]) == expected(order[1:6])
        assert needs(order[1]) == expected(order[6:7])  # only the newly reached one
        assert needs(order[2]) == expected(order[7:8])
        assert needs(order[0]) == expected(order[1:6])  # a new pass
        assert t.needs_after(order[40]) == ({}, [])  # a jump: not going through the tree
        assert needs(order[41]) == expected(order[42:47])  # going on from there
        assert t.needs_after(order[30]) == ({}, [])  # back: no pass either
        assert needs(order[30 + lookahead.STRIDE]) == expected(
            order[31 + lookahead.STRIDE:36 + lookahead.STRIDE])  # files skipped: still a pass
        assert t.needs_after(m.file_inode_offset - 1) == ({}, [])  # not a regular file


def test_blocks_further_on_are_given_to_read_once_a_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the files whose blocks are decompressed ahead, the blocks of the next
    READ_FILES are given to read from the image: each block once per pass, none that is
    also decompressed ahead."""
    monkeypatch.setattr(lookahead, "FILES", 4)
    monkeypatch.setattr(lookahead, "READ_FILES", 12)
    with DwarfsImage.from_path(image_path("small-blocks")) as img:
        m = img.meta
        order = _files_in_walk_order(img)
        t = TreeOrder(m)

        def blocks(inos: list[int]) -> list[int]:
            out: list[int] = []
            for ino in inos:
                out += [b for b, _, _ in m.file_chunks(m.chunk_index(ino))
                        if b >= 0 and b not in out]
            return out

        needs, reads = t.needs_after(order[0])
        assert reads == [b for b in blocks(order[5:13]) if b not in needs]
        given = set(reads)
        needs, reads = t.needs_after(order[1])
        assert reads == [b for b in blocks(order[13:14]) if b not in needs and b not in given]
        assert set(t.needs_after(order[0])[1]) | set(blocks(order[1:5])) >= given  # new pass
        monkeypatch.setattr(lookahead, "READ_BYTES", 1)
        assert len(TreeOrder(m).needs_after(order[0])[1]) <= 1  # bounded in bytes


def test_the_bytes_looked_ahead_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lookahead, "BYTES", 1)
    with DwarfsImage.from_path(image_path("small-blocks")) as img:
        order = _files_in_walk_order(img)
        needs, _ = TreeOrder(img.meta).needs_after(order[0])
        assert len(needs) == 1  # the first chunk of the next file exhausts the budget
