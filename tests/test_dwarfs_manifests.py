"""The reader's view of every native test image equals its manifest (API and FUSE)."""

import pytest

from fim.cli import fim
from fim.fimfs.dwarfs import DwarfsImage
from fim.fimfs.errors import UnsupportedError

from .manifest import DWARFS, MANIFEST_NAMES, compare, image_path, load, view_dir, view_fs


@pytest.mark.parametrize("name", MANIFEST_NAMES)
def test_api_view_equals_manifest(name: str) -> None:
    with DwarfsImage.from_path(image_path(name)) as img:
        assert compare(load(name), view_fs(img)) == []


def test_future_features_refused() -> None:
    with pytest.raises(UnsupportedError, match="this-feature-will-never-exist"):
        DwarfsImage.from_path(DWARFS / "future-features.dwarfs")


def test_header_image_needs_and_gets_offset_detection() -> None:
    path = image_path("header")
    with DwarfsImage.from_path(path) as img:
        assert img.layout.offset == 39
    with DwarfsImage.from_path(path, offset=39) as img:
        assert compare(load("header"), view_fs(img)) == []
    with pytest.raises(Exception, match="no DwarFS image at offset 0"):
        DwarfsImage.from_path(path, offset=0)


@pytest.mark.fuse
@pytest.mark.parametrize("name", MANIFEST_NAMES)
def test_fuse_view_equals_manifest(name: str, fuse_mountpoint) -> None:
    """`fim mount` (daemon) then the host's own stat/readdir/read see the manifest."""
    assert fim.main(["mount", str(image_path(name)), str(fuse_mountpoint)]) == 0
    try:
        assert compare(load(name), view_dir(fuse_mountpoint)) == []
    finally:
        assert fim.main(["umount", str(fuse_mountpoint)]) == 0
