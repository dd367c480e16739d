"""fim.app.config: the two-slot store in the reserved space — round trips, crash points, torn
writes, limits, and the format documented in the module docstring."""

from __future__ import annotations

import json
import os
import random
import struct
import threading
import zlib
from pathlib import Path

import pytest

from fim.app import config, image
from fim.app.config import Bind, Boot, Config, ConfigError, ConfigTooLarge, Desktop

LAUNCHER = "exit 0\n"


def new(tmp_path: Path, reserved: int = 4 << 20) -> image.Layout:
    return image.create(str(tmp_path / "img"), LAUNCHER, b"payload", reserved_size=reserved,
                        dist="ROOTFS")


def reserved_bytes(layout: image.Layout) -> bytes:
    with open(layout.path, "rb") as f:
        f.seek(layout.reserved_offset)
        return f.read(layout.reserved_size)


def put_reserved(layout: image.Layout, data: bytes) -> None:
    with open(layout.path, "r+b") as f:
        f.seek(layout.reserved_offset)
        f.write(data)


def full_config() -> Config:
    cfg = Config()
    cfg.permissions = {"home", "gpu", "optical"}
    cfg.unshare = {"pid", "net"}
    cfg.env = {"A": "1", "PS1": "[x] \\W > ", "Ü": "ß €", "bytes": "\udcff", "E": ""}
    cfg.boot = Boot("bash", ["-c", 'echo "$1"', "--"])
    cfg.binds = [Bind("ro", "$HOME/Music", "/Music"), Bind("dev", "/dev/dri", "/dev/dri")]
    cfg.overlay = "unionfs"
    cfg.casefold = True
    cfg.notify = True
    cfg.desktop = Desktop("My App", ["Network", "System"], ["ENTRY", "ICON"])
    cfg.icon = ("png", os.urandom(300_000))
    cfg.remote = "https://example.com/recipes"
    return cfg


def test_a_new_image_has_the_defaults(tmp_path: Path) -> None:
    cfg = config.load(new(tmp_path))
    assert cfg == Config()
    assert cfg.overlay == "fimfs" and cfg.boot.program == "" and cfg.icon is None
    assert cfg.to_json()["permissions"] == [] and cfg.remote is None


def test_every_field_round_trips(tmp_path: Path) -> None:
    layout = new(tmp_path)
    want = full_config()
    with config.edit(layout) as cfg:
        for name in Config.__slots__:
            setattr(cfg, name, getattr(want, name))
    got = config.load(layout)
    assert got == want
    assert got.icon == want.icon and got.env["bytes"] == "\udcff"
    assert [b.to_json() for b in got.binds] == [b.to_json() for b in want.binds]


def test_edits_alternate_slots_with_growing_generations(tmp_path: Path) -> None:
    layout = new(tmp_path, 8192)
    for i in range(5):
        with config.edit(layout) as cfg:
            cfg.env[f"K{i}"] = str(i)
        data = reserved_bytes(layout)
        gens = [struct.unpack_from("<8sQ", data, slot * 4096) for slot in (0, 1)]
        assert gens[i % 2] == (b"FIMCONF\x01", i + 1)
        assert gens[1 - i % 2][1] == (i if i else 0)
    assert config.load(layout).env == {f"K{i}": str(i) for i in range(5)}


def test_an_exception_inside_edit_writes_nothing(tmp_path: Path) -> None:
    layout = new(tmp_path)
    before = Path(layout.path).read_bytes()
    with pytest.raises(RuntimeError), config.edit(layout) as cfg:
        cfg.env["X"] = "1"
        raise RuntimeError
    assert Path(layout.path).read_bytes() == before


def test_too_large_is_refused_and_the_file_is_unchanged(tmp_path: Path) -> None:
    layout = new(tmp_path, 8192)
    with config.edit(layout) as cfg:
        cfg.env["SMALL"] = "1"
    before = Path(layout.path).read_bytes()
    with pytest.raises(ConfigTooLarge) as info, config.edit(layout) as cfg:
        cfg.env["BIG"] = "x" * 5000
    assert info.value.capacity == config.slot_capacity(layout) == 4096 - 32
    assert "holds 4064 bytes per copy" in info.value.message
    assert Path(layout.path).read_bytes() == before
    assert config.load(layout).env == {"SMALL": "1"}


def _slot_writes(tmp_path: Path) -> tuple[image.Layout, bytes, bytes, Config, Config]:
    """An image after two edits (old) and the bytes the next edit writes (new), into the
    slot that holds the first edit."""
    layout = new(tmp_path, 16384)
    with config.edit(layout) as cfg:
        cfg.env = {"FIRST": "0" * 2000}
    with config.edit(layout) as cfg:
        cfg.env = {"OLD": "1"}
        cfg.permissions = {"home"}
    old_cfg = config.load(layout)
    before = reserved_bytes(layout)
    with config.edit(layout) as cfg:
        cfg.env = {"NEW": "2" * 3000}
        cfg.binds.append(Bind("rw", "/a", "/b"))
    return layout, before, reserved_bytes(layout), old_cfg, config.load(layout)


def test_every_crash_point_leaves_the_old_or_the_new_config(tmp_path: Path) -> None:
    """The writer puts the body of the other slot first, then its 32-byte header: replay
    every prefix of that sequence and load."""
    layout, before, after, old, new_cfg = _slot_writes(tmp_path)
    slot = 0  # the third edit overwrites the first one
    assert before[8192:] == after[8192:]
    body_end = slot + 32 + len(after[slot + 32:].rstrip(b"\0")) + 1
    results = []
    for cut in range(slot + 32, body_end, 7):  # body partly written, old header
        state = bytearray(before)
        state[slot + 32:cut] = after[slot + 32:cut]
        put_reserved(layout, bytes(state))
        results.append(config.load(layout) == old)
    for cut in range(0, 33):  # body complete, header partly written
        state = bytearray(after)
        state[slot + cut:slot + 32] = before[slot + cut:slot + 32]
        put_reserved(layout, bytes(state))
        results.append(config.load(layout) == (new_cfg if state == after else old))
    assert all(results)


def test_torn_pages_never_give_garbage(tmp_path: Path) -> None:
    """A power cut may persist any subset of the written 512-byte sectors."""
    layout, before, after, old, new_cfg = _slot_writes(tmp_path)
    rng = random.Random(7)
    sectors = [i for i in range(0, len(after), 512) if after[i:i + 512] != before[i:i + 512]]
    for _ in range(200):
        state = bytearray(before)
        for i in rng.sample(sectors, rng.randint(0, len(sectors))):
            state[i:i + 512] = after[i:i + 512]
        put_reserved(layout, bytes(state))
        assert config.load(layout) in (old, new_cfg)


def test_a_damaged_newest_slot_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    layout, _before, after, old, _new = _slot_writes(tmp_path)
    damaged = bytearray(after)
    damaged[40] ^= 0xFF
    put_reserved(layout, bytes(damaged))
    assert config.load(layout) == old
    with config.edit(layout) as cfg:  # the next edit overwrites the damaged slot
        cfg.notify = True
    assert config.load(layout).env == {"OLD": "1"} and config.load(layout).notify


def _write_slot(layout: image.Layout, slot: int, generation: int, doc: bytes) -> None:
    """A slot written by hand from the documented format."""
    head = struct.pack("<8sQII", b"FIMCONF\x01", generation, len(doc), 0)
    crc = zlib.crc32(doc, zlib.crc32(head))
    with open(layout.path, "r+b") as f:
        f.seek(layout.reserved_offset + slot * layout.reserved_size // 2)
        f.write(head + struct.pack("<I4x", crc) + doc)


def test_the_documented_format_is_what_is_read(tmp_path: Path) -> None:
    layout = new(tmp_path, 8192)
    _write_slot(layout, 1, 9, json.dumps({"env": {"A": "b"}, "future": 1}).encode())
    _write_slot(layout, 0, 8, json.dumps({"env": {"A": "old"}}).encode())
    assert config.load(layout).env == {"A": "b"}
    _write_slot(layout, 1, 10, json.dumps({"permissions": ["bogus"]}).encode())
    with pytest.raises(ConfigError, match="Unreadable configuration"):
        config.load(layout)


def test_edits_from_threads_are_serialized(tmp_path: Path) -> None:
    layout = new(tmp_path)

    def worker(n: int) -> None:
        for i in range(25):
            with config.edit(layout) as cfg:
                cfg.env[f"T{n}_{i}"] = str(i)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(config.load(layout).env) == 100


def test_a_read_only_image_cannot_be_edited(tmp_path: Path) -> None:
    layout = new(tmp_path)
    os.chmod(layout.path, 0o444)
    if os.access(layout.path, os.W_OK):
        pytest.skip("root can write a read-only file")
    with pytest.raises(image.FimImageError, match="Failed to open input file"), \
            config.edit(layout):
        pass


def test_names_are_the_sandboxs() -> None:
    """One table of permission and unshare names: the sandbox's, in its order."""
    from fim.sandbox import permissions

    assert config.PERMISSIONS is permissions.PERMISSIONS
    assert config.UNSHARE is permissions.UNSHARE


def test_outside_the_slots_contents_the_reserved_space_stays_zero(tmp_path: Path) -> None:
    """A shorter configuration zeroes what its slot held past it (app.update assumes
    zeros there)."""
    layout = new(tmp_path)
    for value in ("x" * 5000, "y" * 4000, "short", "shorter"):
        with config.edit(layout) as cfg:
            cfg.env = {"LONG": value}
    data = bytearray(reserved_bytes(layout))
    for offset, length in config.used_extents(
            layout, lambda n, at: reserved_bytes(layout)[at - layout.reserved_offset:][:n]):
        start = offset - layout.reserved_offset
        data[start:start + length] = bytes(length)
    assert data == bytes(len(data))
    assert config.load(layout).env == {"LONG": "shorter"}
