"""The upstream compatibility assertions for the compat and special images (doc 9)."""

import errno
import os

import pytest

from fim.fimfs.dwarfs import DwarfsImage

from .manifest import DWARFS, MANIFEST_NAMES, compare, image_path, load, view_fs

COMPAT = sorted(p.stem for p in (DWARFS / "compat").glob("compat-v*.dwarfs"))
OLD_FORMAT = {"compat-v0.2.0", "compat-v0.2.3"}
SCRIPT = b"#!/bin/bash\necho 'this is not a filesystem'\nexit 0\n"


def _prefixes(name: str) -> list[bytes]:
    """The header prefixes the upstream compat test puts before each image (doc 2.7)."""
    out = [b"D", b"DWARFS", SCRIPT, b"DWARFS" + SCRIPT, b"DWARFS" + SCRIPT + b"DWARDWAR"]
    if name not in OLD_FORMAT:
        out += [b"DWARFS\x02", b"DWARFS\x02" + SCRIPT, b"DWARFS\x02" + SCRIPT + b"DWARFS\x02"]
    return out


@pytest.mark.parametrize("name", COMPAT)
def test_offset_autodetection_with_headers(name: str, tmp_path) -> None:
    data = image_path(name).read_bytes()
    for i, prefix in enumerate(_prefixes(name)):
        p = tmp_path / f"{i}.img"
        p.write_bytes(prefix + data)
        with DwarfsImage.from_path(p) as img:
            assert img.layout.offset == len(prefix), prefix
            assert compare(load(name), view_fs(img)) == []


@pytest.mark.parametrize("name", COMPAT)
def test_compat_statvfs_index_and_format_sh(name: str) -> None:
    version = tuple(int(x) for x in name.split("-v")[1].split("."))
    with DwarfsImage.from_path(image_path(name)) as img:
        st = img.statfs()
        assert (st.bsize, st.frsize) == (1, 1)
        assert st.blocks == (10614 if version < (0, 5, 0) else 2747)
        assert st.files == (33 if version < (0, 3, 0) else 36)
        assert img.layout.indexed == (version >= (0, 6, 0))
        a = img.getattr("/format.sh")
        assert (a.mode, a.size, a.uid, a.gid, a.mtime_ns) == (0o100755, 94, 1000, 100,
                                                              1606256045 * 10**9)
        if version < (0, 3, 0):
            assert (a.atime_ns, a.ctime_ns) == (1616013831 * 10**9, 1616013816 * 10**9)
        fh = img.open("/format.sh", os.O_RDONLY)
        assert img.read("/format.sh", 1000, 0, fh).startswith(b"#!/bin/bash\nfind test/ src/")
        assert img.readlink("/foo/bad") == "../foo"
        want = [".", "..", "1", "bad", "bar", "bla.sh"] + (["pipe"] if version >= (0, 3) else [])
        assert [".", ".."] + img.readdir("/foo") == want
        assert img.readdir("/") == ["bench.sh", "dev", "empty", "foo", "foobar", "format.sh",
                                    "perl-exec.sh", "test.py"]
        with pytest.raises(OSError) as e:
            img.readlink("/format.sh")
        assert e.value.errno == errno.EINVAL
        assert img.check(full=True) == []


@pytest.mark.parametrize("name", [n for n in MANIFEST_NAMES])
def test_full_check_of_every_good_image(name: str) -> None:
    with DwarfsImage.from_path(image_path(name)) as img:
        assert img.check(full=True) == []


def test_setuidgid_legacy_owner_in_index() -> None:
    for v in ("0.4.1", "0.5.6"):
        with DwarfsImage.from_path(DWARFS / "compat" / f"setuidgid-v{v}.dwarfs") as img:
            a = img.getattr("/dwarfs/version.h")
            assert (a.uid, a.gid, a.size) == (33333, 44444, 311)


def test_windows_symlinks_raw_and_converted() -> None:
    with DwarfsImage.from_path(DWARFS / "winlink.dwarfs") as img:
        assert img.readlink("/link.txt") == "subdir/test.txt"
        assert img.readlink("/dir/link.txt") == "../subdir/test.txt"
        raw = img.readlink_bytes(img.meta.lookup([b"dir", b"link.txt"]), raw=True)
        assert raw == b"..\\subdir\\test.txt"
        assert img.getattr("/dir/link.txt").size == 18


def test_sentinel_self_entry_only_warns() -> None:
    with DwarfsImage.from_path(DWARFS / "dir-sentinel-self-entry-nonzero.dwarfs") as img:
        assert img.check(full=True) == []
        assert any("sentinel" in w for w in img.warnings)


def test_gh307_totals_reported_as_stored() -> None:
    with DwarfsImage.from_path(DWARFS / "gh307.dwarfs") as img:
        info = img.info()
        assert (info["total_fs_size"], info["total_hardlink_size"],
                info["total_allocated_fs_size"]) == (7481, 3222, 401)


def test_nested_image_read_from_outer(tmp_path) -> None:
    with DwarfsImage.from_path(DWARFS / "datadata.dwarfs") as outer:
        fh = outer.open("/data.dwarfs", os.O_RDONLY)
        inner = outer.read("/data.dwarfs", 1 << 20, 0, fh)
    p = tmp_path / "inner.dwarfs"
    p.write_bytes(inner)
    with DwarfsImage.from_path(p) as img:
        assert compare(load("data"), view_fs(img)) == []


def test_image_inside_a_larger_file_with_size(tmp_path) -> None:
    """A layer in a FlatImage is followed by other data: ``size`` bounds the image."""
    data = image_path("compat-v0.9.10").read_bytes()
    p = tmp_path / "embedded"
    p.write_bytes(b"x" * 100 + data + b"trailing garbage" * 10)
    with DwarfsImage.from_path(p, offset=100, size=len(data)) as img:
        assert img.layout.indexed
        assert compare(load("compat-v0.9.10"), view_fs(img)) == []


def test_info_describes_the_image() -> None:
    with DwarfsImage.from_path(image_path("compat-v0.9.10")) as img:
        info = img.info()
    assert info["format_version"] == "2.5"
    assert [s["type"] for s in info["sections"]] == [
        "BLOCK", "BLOCK", "METADATA_V2_SCHEMA", "METADATA_V2", "HISTORY", "SECTION_INDEX"]
    assert info["blocks"] == {"count": 2, "block_size": 1024, "codecs": {"none": 2}}
    assert info["inodes_by_type"] == {"dir": 14, "symlink": 2, "file": 17, "char": 2, "fifo": 1}
    assert info["history"][0]["version"]["minor"] == 9
    assert info["created_by"] == "libdwarfs v0.9.10"
