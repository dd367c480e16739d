"""The write path of a writable mount (issue 24): write-only opens bypass the page cache
(no GETXATTR of ``security.capability`` before every write(2)), and the filesystem
itself then clears set-user-ID, set-group-ID and file capabilities at a file's first
write, as the kernel does for an unprivileged writer."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from fim.fimfs.fuse import umount

from .containers import Runner
from .manifest import image_path
from .test_read_path import _opcodes


@pytest.fixture
def debug_mount(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """A writable stack (one layer, an empty upper) mounted in a foreground daemon with
    libfuse's request log: (mount point, upper, log)."""
    mp, upper, log = tmp_path / "mp", tmp_path / "upper", tmp_path / "debug.log"
    mp.mkdir()
    upper.mkdir()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fim.cli.fim", "mount", "--foreground",
                                 "-o", "debug", "--layer", str(image_path("default")),
                                 "--upper", str(upper), str(mp)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mp):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        yield mp, upper, log
    finally:
        umount(str(mp))
        proc.wait(30)


def _requests(log: Path) -> Counter[str]:
    time.sleep(0.3)  # the daemon logs a request after answering it
    return Counter(_opcodes(log.read_text()))


@pytest.mark.fuse
def test_write_only_files_send_writes_alone(debug_mount: tuple[Path, Path, Path]) -> None:
    """Each write(2) to a write-only descriptor is one WRITE, with no GETXATTR; the data
    is all there after fsync; a file opened read-write still goes through the page
    cache and reads back what was written."""
    mp, upper, log = debug_mount
    fd = os.open(mp / "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    for i in range(40):
        os.write(fd, bytes([i]) * 1000)
    os.fsync(fd)
    os.close(fd)
    with open(mp / "new", "ab") as f:  # an existing file, O_WRONLY | O_APPEND
        f.write(b"end")
    want = b"".join(bytes([i]) * 1000 for i in range(40)) + b"end"
    assert (upper / "new").read_bytes() == want
    assert (mp / "new").read_bytes() == want
    ops = _requests(log)
    assert ops["WRITE"] == 41 and ops["GETXATTR"] == 0, ops
    with open(mp / "new", "r+b") as f:
        f.write(b"AB")
        f.seek(0)
        assert f.read(3) == b"AB\x00"
    assert (upper / "new").read_bytes()[:3] == b"AB\x00"


@pytest.mark.fuse
def test_first_write_drops_set_id_bits_and_capabilities(
        debug_mount: tuple[Path, Path, Path]) -> None:
    """Set-user-ID goes at the first write, set-group-ID too where group execute marks it
    as such (without it the bit means mandatory locking and stays), and so does
    ``security.capability``; bits set while a writer is open go at its next write."""
    mp, upper, _ = debug_mount
    modes = {"suid": 0o4755, "sgid": 0o2755, "sgid-nox": 0o2745, "both-nox": 0o6745,
             "plain": 0o755}
    for name, mode in modes.items():
        (upper / name).write_bytes(b"#!/bin/sh\n")
        os.chmod(upper / name, mode)
    os.setxattr(upper / "plain", "security.capability",
                bytes.fromhex("01000002" "00200000" "00000000" "00000000" "00000000"))
    for name in modes:
        with open(mp / name, "ab") as f:
            f.write(b"true\n")
    got = {name: stat.S_IMODE(os.stat(mp / name).st_mode) for name in modes}
    assert got == {"suid": 0o755, "sgid": 0o755, "sgid-nox": 0o2745, "both-nox": 0o2745,
                   "plain": 0o755}
    assert "security.capability" not in os.listxattr(upper / "plain")
    with open(mp / "plain", "ab", buffering=0) as f:
        f.write(b"a")
        os.chmod(mp / "plain", 0o4755)
        f.write(b"b")
    assert stat.S_IMODE(os.stat(mp / "plain").st_mode) == 0o755
    assert (upper / "plain").read_bytes() == b"#!/bin/sh\ntrue\nab"


def test_a_program_writing_a_set_user_id_file_clears_it(runner: Runner) -> None:
    """In a container, as root and as an unprivileged user: a set-user-ID file of the
    upper written by a program loses the bit."""
    out = runner.ok("fim-exec", "sh", "-c",
                    "cd /tmp && echo 'echo hi' > f && chmod 4755 f && stat -c %a f"
                    " && echo 'echo again' >> f && stat -c %a f && cat f")
    assert out.split() == ["4755", "755", "echo", "hi", "echo", "again"]
