"""Fixtures shared by every test directory, and the suite's PATH.

The native DwarFS tools (mkdwarfs, dwarfsck, dwarfsextract, dwarfs) in
``../shared/native/bin``, when that directory exists, are put on PATH for the whole
suite, so the tests that compare with them run wherever they are available (CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fim.osutil import mounts

NATIVE_BIN = Path(__file__).resolve().parent.parent / "shared" / "native" / "bin"
if NATIVE_BIN.is_dir() and str(NATIVE_BIN) not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = os.pathsep.join(filter(None, [os.environ.get("PATH"), str(NATIVE_BIN)]))


def _in_mount_table(path: str) -> bool:
    # Not os.path.ismount: a FUSE mount whose server died cannot be stat-ed.
    return path in (mounts.mount_points() or ())


@pytest.fixture
def fuse_mountpoint(tmp_path: Path) -> Iterator[Path]:
    """An empty directory to mount on; anything still mounted there is lazily unmounted
    at teardown, even when the test failed half-way."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    yield mp
    path = os.path.realpath(mp)
    for argv in (["fusermount3", "-uz", path], ["fusermount", "-uz", path], ["umount", "-l", path]):
        if not _in_mount_table(path):
            break
        if shutil.which(argv[0]):
            subprocess.run(argv, capture_output=True, timeout=30)
