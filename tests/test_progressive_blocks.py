"""Blocks decompressed only as far as their readers need (fimfs.dwarfs.zstdstream).

The native "default" image holds its whole tree in one zstd block of a few MiB, so
every file is a slice of the same block: readers at different offsets of one block in
the making, eviction while it is decoded, and a corruption in the middle of its stream.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import random
import shutil
import threading
from pathlib import Path

import pytest

from fim.fimfs.dwarfs import DwarfsImage, blockcache, codecs, sections, zstdstream

from .manifest import image_path, load

pytestmark = pytest.mark.skipif(not zstdstream.available(),
                                reason="libzstd.so.1 cannot be loaded: blocks are decoded whole")


@pytest.fixture
def fine_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress published every 4 KiB of output, input handed over 512 bytes at a time:
    many waits and hand-overs even on a small block."""
    monkeypatch.setattr(blockcache, "PROGRESS_STEP", 4096)
    monkeypatch.setattr(zstdstream, "STEP", 512)


def _whole(img: DwarfsImage, n: int) -> bytes:
    s = sections.resolve(img._f, img.cache.sections[n])
    return codecs.decompress(s.compression, sections.read_payload(img._f, s),
                             img.meta.block_size)


def _files(img: DwarfsImage) -> dict[str, bytes]:
    """Every regular file's content, per the native driver's manifest (by sha256)."""
    want = {e["path"]: e["sha256"] for e in load("default") if e["type"] == "file"}
    out = {}
    for path, sha in want.items():
        fh = img.open(path, 0)
        data = img.read(path, 1 << 30, 0, fh)
        assert hashlib.sha256(data).hexdigest() == sha, path
        out[path] = data
    return out


@pytest.mark.parametrize("name", ["default", "l5", "small-blocks"])
def test_stream_decoder_gives_the_whole_decompression(name: str) -> None:
    rnd = random.Random(name)
    with DwarfsImage.from_path(image_path(name)) as img:
        for n, s in enumerate(img.cache.sections):
            s = sections.resolve(img._f, s)
            if s.compression != codecs.ZSTD:
                continue
            payload = sections.read_payload(img._f, s)
            size = codecs.announced(codecs.ZSTD, payload, img.meta.block_size)
            dec = zstdstream.StreamDecoder(
                payload, size, lambda pos, n, at=s.payload_offset: img._f.pread(at + pos, n))
            done = 0
            while done < size:  # in uneven steps, each one final once reported
                done = dec.advance(done + rnd.randrange(1, 300_000))
                assert dec.done == done
                if rnd.random() < 0.5:
                    dec.release_input()  # the rest read again from the image
            assert bytes(dec.data) == _whole(img, n)


def test_a_read_decodes_its_block_only_as_far_as_it_needs() -> None:
    with DwarfsImage.from_path(image_path("default")) as img:
        m = img.meta
        path = next(p for p, e in img.walk() if m.first_block(m.ent_inode[e]) == 0 and
                    next(m.file_chunks(m.chunk_index(m.ent_inode[e])))[1] < 4096)
        fh = img.open(path, 0)
        img.read(path, 100, 0, fh)
        b = img.cache.lru[0]
        assert 100 <= b.done < b.size, "the whole block was decoded for its first bytes"
        assert b.decoder is not None
        whole = _whole(img, 0)
        assert bytes(b.data[:b.done]) == whole[:b.done]
        assert bytes(img.block(0)) == whole  # the rest, when asked for
        assert b.done == b.size and b.decoder is None


def test_concurrent_readers_of_one_block_in_the_making(fine_steps: None) -> None:
    """Eight threads read random slices of files that all lie in the one block while it
    is being decoded, each handing the decoding on to the next when it has its bytes."""
    with DwarfsImage.from_path(image_path("default")) as reference:
        want = _files(reference)
    paths = sorted(p for p, d in want.items() if d)

    def worker(img: DwarfsImage, seed: int, errors: list[str]) -> None:
        rnd = random.Random(seed)
        for _ in range(60):
            p = rnd.choice(paths)
            data = want[p]
            off = rnd.randrange(len(data))
            n = rnd.randrange(1, 70_000)
            if img.read(p, n, off, img.open(p, 0)) != data[off:off + n]:
                errors.append(f"{p}@{off}+{n}")

    for round_ in range(5):
        errors: list[str] = []
        with DwarfsImage.from_path(image_path("default")) as img:
            threads = [threading.Thread(target=worker, args=(img, round_ * 8 + i, errors))
                       for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not any(t.is_alive() for t in threads), "a reader hung"
        assert not errors, errors[:5]


def test_blocks_evicted_while_being_decoded(fine_steps: None) -> None:
    """A cache too small for one block: every block is dropped while readers still decode
    or copy from it; they get the right bytes, and the next reader starts it again."""
    with DwarfsImage.from_path(image_path("small-blocks")) as reference:
        want = {p: reference.read(p, 1 << 30, 0, reference.open(p, 0))
                for p, e in reference.walk()
                if reference.meta.first_block(reference.meta.ent_inode[e]) is not None}
    paths = sorted(want)
    errors: list[str] = []
    with DwarfsImage.from_path(image_path("small-blocks"), cache_bytes=16 << 10) as img:
        def worker(seed: int) -> None:
            rnd = random.Random(seed)
            for _ in range(150):
                p = rnd.choice(paths)
                off = rnd.randrange(len(want[p]))
                if img.read(p, 40_000, off, img.open(p, 0)) != want[p][off:off + 40_000]:
                    errors.append(f"{p}@{off}")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a reader hung"
        assert len(img.cache.lru) <= 1
    assert not errors, errors[:5]


def _corrupt_block_tail(src: Path, dst: Path) -> tuple[int, int]:
    """A copy of ``src`` whose block 0 has its compressed stream overwritten from 3/4 on,
    the section's checksums made to match (the damage is in the zstd data itself).
    Returns (decompressed size, offset in the payload where the damage starts)."""
    shutil.copyfile(src, dst)
    with DwarfsImage.from_path(dst) as img:
        s = sections.resolve(img._f, img.cache.sections[0])
        payload = bytearray(sections.read_payload(img._f, s))
        size = codecs.announced(codecs.ZSTD, bytes(payload), img.meta.block_size)
    bad = len(payload) * 3 // 4
    payload[bad:] = bytes([0xFF]) * (len(payload) - bad)
    header = sections.pack_header(s.type, s.compression, s.number, bytes(payload))
    with open(dst, "r+b") as f:
        f.seek(s.offset)
        f.write(header + payload)
    return size, bad


def test_a_corrupt_stream_fails_where_it_is_corrupt(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The bytes before the damage are served; a read beyond it is EIO with a log line,
    and stays EIO; nothing hangs, and a thread waiting on the block is told too."""
    image = tmp_path / "corrupt.dwarfs"
    size, _ = _corrupt_block_tail(image_path("default"), image)
    with DwarfsImage.from_path(image_path("default")) as good:
        whole = _whole(good, 0)
    with DwarfsImage.from_path(image) as img, caplog.at_level(logging.ERROR):
        head = img.cache.data(0, 4096, "")
        assert bytes(head[:4096]) == whole[:4096]
        for _ in range(2):
            with pytest.raises(OSError) as exc:
                img.cache.data(0, size, "/some/file")
            assert exc.value.errno == errno.EIO
        assert "block 0 unreadable" in caplog.text and "zstd" in caplog.text
        assert 0 not in img.cache.lru


def test_waiters_on_a_block_that_turns_out_corrupt_get_eio(tmp_path: Path,
                                                           fine_steps: None) -> None:
    image = tmp_path / "corrupt.dwarfs"
    size, _ = _corrupt_block_tail(image_path("default"), image)
    results: list[object] = []
    with DwarfsImage.from_path(image) as img:
        def worker() -> None:
            try:
                img.cache.data(0, size, "")
                results.append("read")
            except OSError as e:
                results.append(e.errno)

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a waiter hung"
    assert results == [errno.EIO] * 6


def test_without_libzstd_blocks_are_decoded_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zstdstream, "available", lambda: False)
    with DwarfsImage.from_path(image_path("default")) as img:
        _files(img)
        b = img.cache.lru[0]
        assert isinstance(b.data, bytes) and b.done == b.size and b.decoder is None


def test_an_unexpected_failure_leaves_the_block_to_the_next_reader(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoding thread that dies of something unforeseen still hands the block on: the
    next reader decodes it (nobody waits forever on a block nobody advances)."""
    real = zstdstream.StreamDecoder.advance
    calls = []

    def failing_once(self: zstdstream.StreamDecoder, target: int) -> int:
        if not calls:
            calls.append(target)
            raise RuntimeError("unforeseen")
        return real(self, target)

    monkeypatch.setattr(zstdstream.StreamDecoder, "advance", failing_once)
    with DwarfsImage.from_path(image_path("default")) as img:
        with pytest.raises(RuntimeError):
            img.block(0)
        assert bytes(img.block(0)) == _whole(img, 0)
