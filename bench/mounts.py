"""Mounting the backends compared in bench/.

Read-only layers (fim, squashfuse, native dwarfs): each backend is a process serving
one mount point; ``Mounted.rss_mb()`` reports the peak resident memory of that process.

Writable stacks of layers (``mounted_stack``): fim's one mount of the whole stack, or
a union program (fuse-overlayfs, unionfs-fuse, kernel overlayfs) over one mount per
layer; ``Mounted.rss_mb()`` then adds up every process serving the stack.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

FIM = [sys.executable, "-m", "fim.cli.fim"]


def _wait_mounted(path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        if proc.poll() is not None:
            raise RuntimeError(f"mount of {path} failed: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"mount of {path} timed out")
        time.sleep(0.005)


class Mounted:
    def __init__(self, proc: subprocess.Popen | None, path: Path,
                 helpers: Sequence[Mounted] = ()) -> None:
        self.proc, self.path, self.helpers = proc, path, list(helpers)

    def rss_mb(self) -> float:
        """Peak resident set size (VmHWM) of the serving process(es), in MiB."""
        own = 0.0
        if self.proc is not None:
            own = float("nan")
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    own = int(line.split()[1]) / 1024
        return own + sum(h.rss_mb() for h in self.helpers)


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
    with serving(command(backend, image, mountpoint), mountpoint) as m:
        yield m


@contextmanager
def serving(argv: list[str], mountpoint: Path, helpers: Sequence[Mounted] = ()):  # noqa: ANN201
    """Run the foreground FUSE server ``argv`` until the block ends, then unmount."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_mounted(mountpoint, proc)
        yield Mounted(proc, mountpoint, helpers)
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)
            proc.wait()


#: Writable stacks: fim's one mount, or a union over per-layer mounts (fim's DwarFS
#: mounts, or native dwarfs for "+dwarfs").
STACK_BACKENDS = ["fim", "fuse-overlayfs", "fuse-overlayfs+dwarfs", "unionfs-fuse",
                  "kernel-overlay"]


def require_stack(backend: str) -> None:
    union, _, layer = backend.partition("+")
    if layer:
        require(layer)
    exe = {"fuse-overlayfs": "fuse-overlayfs", "unionfs-fuse": "unionfs-fuse"}.get(union)
    if exe and shutil.which(exe) is None:
        pytest.skip(f"{exe} is not on PATH")
    if union == "kernel-overlay" and os.geteuid() != 0:
        pytest.skip("kernel overlayfs needs root")


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@contextmanager
def mounted_stack(backend: str, layers: Sequence[Path], mountpoint: Path):  # noqa: ANN201
    """``layers`` (bottom first) and a new empty upper directory, writable on ``mountpoint``."""
    upper = _fresh_dir(mountpoint.with_name(mountpoint.name + ".upper"))
    work = _fresh_dir(mountpoint.with_name(mountpoint.name + ".work"))
    if backend == "fim":
        argv = [*FIM, "mount", "--foreground", "--upper", str(upper)]
        for layer in layers:
            argv += ["--layer", str(layer)]
        with serving([*argv, str(mountpoint)], mountpoint) as m:
            yield m
        return
    union, _, layer_backend = backend.partition("+")
    with ExitStack() as stack:
        below = [stack.enter_context(mounted(layer_backend or "fim", image,
                                             mountpoint.with_name(f"{mountpoint.name}.l{i}")))
                 for i, image in enumerate(layers)]
        top_first = [str(m.path) for m in reversed(below)]
        if union == "fuse-overlayfs":
            argv = ["fuse-overlayfs", "-f", "-o", f"lowerdir={':'.join(top_first)},"
                    f"upperdir={upper},workdir={work}", str(mountpoint)]
        elif union == "unionfs-fuse":
            branches = ":".join([f"{upper}=RW", *(f"{d}=RO" for d in top_first)])
            argv = ["unionfs-fuse", "-f", "-o", "cow", branches, str(mountpoint)]
        elif union == "kernel-overlay":
            mountpoint.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={':'.join(top_first)},upperdir={upper},workdir={work}",
                            str(mountpoint)], check=True)
            try:
                yield Mounted(None, mountpoint, below)
            finally:
                subprocess.run(["umount", str(mountpoint)], check=True)
            return
        else:
            raise ValueError(backend)
        yield stack.enter_context(serving(argv, mountpoint, below))


class FreshMounts:
    """A new mount with cold kernel caches for every benchmark round (untimed setup).

    ``opener`` is :func:`mounted` (one image) or :func:`mounted_stack` (its layers).
    """

    def __init__(self, backend: str, image: Path | Sequence[Path], mountpoint: Path,
                 opener=None, prepare=None) -> None:  # noqa: ANN001
        self.args = (backend, image, mountpoint)
        self.opener = opener or mounted
        self.prepare = prepare  # prepare(mount root): untimed work after mounting
        self._ctx = None
        self.current: Mounted | None = None

    def setup(self) -> None:
        self.close()
        drop_caches()
        self._ctx = self.opener(*self.args)
        self.current = self._ctx.__enter__()
        if self.prepare is not None:
            self.prepare(self.current.path)

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = self.current = None


def measure_fresh(benchmark, backend: str, image: Path | Sequence[Path], mountpoint: Path,  # noqa: ANN001
                  action, rounds: int, opener=None, prepare=None):  # noqa: ANN001, ANN201
    """Time ``action(mount root)`` on a fresh, cold mount per round (see FreshMounts;
    ``prepare(mount root)`` runs untimed before each); returns (the last result, the
    serving processes' peak RSS in MiB)."""
    fresh = FreshMounts(backend, image, mountpoint, opener, prepare)
    try:
        result = benchmark.pedantic(lambda: action(fresh.current.path), setup=fresh.setup,
                                    rounds=rounds)
        return result, fresh.current.rss_mb()
    finally:
        fresh.close()


def drop_caches() -> None:
    """Forget the kernel's page and dentry caches (root only) so each round is cold."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass
