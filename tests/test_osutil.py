"""osutil: atomic writes, pidfd waits, the mount table."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from fim.osutil import files, mounts, procs


def test_write_atomic_replaces_whole(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    files.write_atomic(str(path), b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f"]


def test_replacing_keeps_the_old_file_on_error(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), files.replacing(str(path)) as tmp:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_replacing_with_a_given_name(tmp_path: Path) -> None:
    path, tmp = tmp_path / "f", tmp_path / ".f.update-1"
    with files.replacing(str(path), str(tmp)) as name:
        assert name == str(tmp)
        tmp.write_bytes(b"x")
    assert path.read_bytes() == b"x" and not tmp.exists()


def test_mount_table_unescapes(tmp_path: Path) -> None:
    assert mounts.is_mounted("/")
    assert not mounts.is_mounted(str(tmp_path))
    assert mounts._unescape(rb"/a\040b\134c\011") == b"/a b\\c\t"


def test_wait_gone() -> None:
    child = subprocess.Popen(["sleep", "0.2"])
    start = time.monotonic()
    procs.wait_gone(child.pid)
    assert time.monotonic() - start >= 0.15
    child.wait()
    procs.wait_gone(child.pid)  # not visible any more: at once


def test_remove_tree_removes_everything_on_its_filesystem(tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / "a" / "locked").mkdir(parents=True)
    (top / "a" / "locked" / "f").write_text("x")
    (top / "a" / "locked").chmod(0o500)  # as a container may leave it
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept").write_text("k")
    (top / "link").symlink_to(outside)  # removed, never followed
    files.remove_tree(str(top))
    assert not top.exists() and (outside / "kept").read_text() == "k"
    files.remove_tree(str(top))  # gone already: nothing to do


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_remove_tree_never_enters_a_mount(tmp_path: Path) -> None:
    """An instance directory removed while its mount is up (an unmount that failed, a
    killed run): the files behind the mount survive, the rest goes."""
    inst = tmp_path / "instance"
    mount = inst / "mount"
    mount.mkdir(parents=True)
    (inst / "passwd").write_text("p")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount)], check=True)
    try:
        (mount / "usr").mkdir()
        (mount / "usr" / "file").write_text("container data")
        files.remove_tree(str(inst))
        assert (mount / "usr" / "file").read_text() == "container data"
        assert sorted(os.listdir(inst)) == ["mount"]
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    files.remove_tree(str(inst))
    assert not inst.exists()


def test_device_of_reads_the_mount_table() -> None:
    assert mounts.device_of("/proc") == os.stat("/proc").st_dev
    assert mounts.device_of("/proc/self") is None  # not a mount point


def test_unmount_helpers_are_found_without_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mount daemon started with a PATH lacking fusermount3 must still unmount itself."""
    if not os.path.exists("/usr/bin/fusermount3"):
        pytest.skip("no /usr/bin/fusermount3")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert mounts.which("fusermount3") == "/usr/bin/fusermount3"
