"""What the benchmark suites do on a mount, shared so each backend gets the same work."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def walk(root: Path) -> int:
    """lstat every entry below ``root``; the number of entries."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))
            n += 1
    return n


def find_walk(root: Path) -> int:
    """`find -printf "%s %m"` over the tree (a metadata walk by a real program); lines out."""
    out = subprocess.run(["find", ".", "-printf", "%s %m %p\n"], cwd=root, check=True,
                         capture_output=True).stdout
    return out.count(b"\n")


def tar_read(root: Path) -> int:
    """`tar c . | cat`: every file read once, in directory order; bytes of the archive."""
    tar = subprocess.Popen(["tar", "cf", "-", "."], cwd=root, stdout=subprocess.PIPE)
    total = 0
    assert tar.stdout is not None
    while chunk := tar.stdout.read(1 << 20):
        total += len(chunk)
    if tar.wait():
        raise RuntimeError("tar failed")
    return total
