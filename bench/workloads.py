"""What the benchmark suites do on a mount, shared so each backend gets the same work."""

from __future__ import annotations

import os
from pathlib import Path


def walk(root: Path) -> int:
    """lstat every entry below ``root``; the number of entries."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))
            n += 1
    return n
