"""Mounting the read-only backends compared in bench/: fim, squashfuse, native dwarfs.

Each backend is a process serving one mount point; ``Mounted.rss_mb()`` reports the
peak resident memory of that process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

FIM = [sys.executable, "-m", "cli.fim"]


def _wait_mounted(path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        if proc.poll() is not None:
            raise RuntimeError(f"mount of {path} failed: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"mount of {path} timed out")
        time.sleep(0.005)


class Mounted:
    def __init__(self, proc: subprocess.Popen, path: Path) -> None:
        self.proc, self.path = proc, path

    def rss_mb(self) -> float:
        """Peak resident set size (VmHWM) of the serving process, in MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def command(backend: str, image: Path, mountpoint: Path) -> list[str]:
    """The foreground command that serves ``image`` on ``mountpoint``."""
    if backend == "fim":
        return [*FIM, "mount", "--foreground", str(image), str(mountpoint)]
    if backend == "squashfuse":
        return ["squashfuse", "-f", str(image), str(mountpoint)]
    if backend == "dwarfs":
        return ["dwarfs", str(image), str(mountpoint), "-f"]
    raise ValueError(backend)


def require(backend: str) -> None:
    exe = {"fim": None, "squashfuse": "squashfuse", "dwarfs": "dwarfs"}[backend]
    if exe and shutil.which(exe) is None:
        pytest.skip(f"{exe} is not on PATH (native backend not installed on this machine)")


@contextmanager
def mounted(backend: str, image: Path, mountpoint: Path):  # noqa: ANN201
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(command(backend, image, mountpoint), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        _wait_mounted(mountpoint, proc)
        yield Mounted(proc, mountpoint)
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)
            proc.wait()


class FreshMounts:
    """A new mount with cold kernel caches for every benchmark round (untimed setup)."""

    def __init__(self, backend: str, image: Path, mountpoint: Path) -> None:
        self.args = (backend, image, mountpoint)
        self._ctx = None
        self.current: Mounted | None = None

    def setup(self) -> None:
        self.close()
        drop_caches()
        self._ctx = mounted(*self.args)
        self.current = self._ctx.__enter__()

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = self.current = None


def drop_caches() -> None:
    """Forget the kernel's page and dentry caches (root only) so each round is cold."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass
