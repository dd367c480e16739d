"""Section-level behaviour: undecodable codecs, the section index and its fallback."""

import errno
import logging
import os
import struct

import pytest

from fim.fimfs.dwarfs import DwarfsImage, sections

from .manifest import compare, image_path, load, view_fs

COMPAT = image_path("compat-v0.9.10")  # 2 NONE blocks, an index, a history


def _rewrite(data: bytes, edit) -> bytes:  # noqa: ANN001 - edit(i, section, payload) -> (comp, payload)
    """Re-emit every section through ``edit``, with fresh checksums and index."""
    out, offsets, pos, i = bytearray(), [], 0, 0
    while pos + 64 <= len(data):
        s = sections.parse_header(data[pos:pos + 64], pos)
        payload = data[pos + 64:pos + 64 + s.length]
        comp, payload = edit(i, s, payload)
        if s.type == sections.INDEX:
            entries = [(t << 48) | o for t, o in offsets] + [(sections.INDEX << 48) | len(out)]
            payload = struct.pack(f"<{len(entries)}Q", *entries)
        offsets.append((s.type, len(out)))
        out += sections.pack_header(s.type, comp, s.number, payload) + payload
        pos += 64 + s.length
        i += 1
    return bytes(out)


def test_block_of_unsupported_codec_fails_only_its_reads(tmp_path, caplog) -> None:
    """Block 1 relabelled FLAC (id 6): its files give EIO with a logged reason, the rest works."""
    data = _rewrite(COMPAT.read_bytes(),
                    lambda i, s, p: (6 if i == 1 else s.compression, p))
    path = tmp_path / "flac.dwarfs"
    path.write_bytes(data)
    with DwarfsImage.from_path(path) as img:
        readable, failed = 0, 0
        for _, e in img.walk():
            a = img.attr_of(e)
            if not a.is_reg or not a.size:
                continue
            blocks = {b for b, _, _ in img.meta.file_chunks(img.meta.chunk_index(a.ino))}
            if 1 in blocks:
                with caplog.at_level(logging.ERROR), pytest.raises(OSError) as err:
                    img.read_entry(e, a.size, 0)
                assert err.value.errno == errno.EIO
                failed += 1
            else:
                assert len(img.read_entry(e, a.size, 0)) == a.size
                readable += 1
        assert readable and failed
        assert "unsupported compression: flac" in caplog.text
        assert any("block 1" in p for p in img.check())
        assert img.info()["blocks"]["codecs"] == {"flac": 1, "none": 1}


def test_valid_index_is_used_and_broken_index_falls_back(tmp_path) -> None:
    with DwarfsImage.from_path(COMPAT) as img:
        assert img.layout.indexed
    data = bytearray(COMPAT.read_bytes())
    data[-8] ^= 0x01  # the index's own entry no longer points at itself: index ignored
    path = tmp_path / "badindex.dwarfs"
    path.write_bytes(bytes(data))
    with DwarfsImage.from_path(path) as img:
        assert not img.layout.indexed
        assert compare(load("compat-v0.9.10"), view_fs(img)) == []


def test_truncated_image_is_a_clear_error(tmp_path) -> None:
    data = COMPAT.read_bytes()
    path = tmp_path / "cut.dwarfs"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(sections.ImageError, match="truncated"):
        DwarfsImage.from_path(path, offset=0)


def test_read_past_eof_and_odd_offsets() -> None:
    with DwarfsImage.from_path(image_path("small-blocks")) as img:
        fh = img.open("/big.log", os.O_RDONLY)
        size = img.getattr("/big.log").size
        whole = img.read("/big.log", size, 0, fh)
        assert len(whole) == size
        assert img.read("/big.log", 100, size, fh) == b""
        assert img.read("/big.log", 100, size - 10, fh) == whole[-10:]
        for off in (1, 16383, 16384, 16385, size // 2):
            assert img.read("/big.log", 40000, off, fh) == whole[off:off + 40000]
        with pytest.raises(OSError) as e:
            img.open("/big.log", os.O_RDWR)
        assert e.value.errno == errno.EROFS
