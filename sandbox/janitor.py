"""Cleanup when a run's process dies without cleaning up (spec 12.4), and pruning of
instance directories left by dead runs.

:func:`start` forks a small watcher in its own session: it holds a pidfd of the
process it watches and, when that process is gone (SIGKILL included), detaches every
listed mount lazily (a FUSE mount whose server died would otherwise stay as
"Transport endpoint is not connected") and removes the instance directory. A run
that ends normally stops it with :func:`stop` first. :func:`prune` removes the
instance directories of runs that are gone, so the user's runtime directory does not
grow run after run.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence

from fim.osutil import mounts, procs
from fim.osutil.files import remove_tree
from fim.sandbox.instance import alive


def detach(mountpoint: str) -> None:
    """Lazily unmount ``mountpoint`` if it is mounted (fusermount3, umount as root, or
    the system call in a run's own mount namespace)."""
    if mounts.is_mounted(mountpoint):
        mounts.unmount(mountpoint, lazy=True, timeout=10)


def _watch(pidfd: int, mountpoints: Sequence[str], directory: str | None) -> None:
    """The watcher's body: wait for the pidfd, then clean up (never returns)."""
    code = 0
    try:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        procs.wait(pidfd)
        for mp in mountpoints:  # top first: a mount may sit inside another's tree
            detach(mp)
        if directory is not None:
            remove_tree(directory)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def start(pid: int, mountpoints: Sequence[str], directory: str | None = None) -> int:
    """Start a watcher of process ``pid``; returns the watcher's pid.

    When ``pid`` ends before :func:`stop` is called, the watcher detaches
    ``mountpoints`` (in the given order) and removes ``directory``. The watcher
    keeps none of the caller's file descriptors, so pipes to the caller still see
    their end when the caller exits.
    """
    pidfd = os.pidfd_open(pid)
    rfd, wfd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked watcher
        try:
            os.setsid()
            grandchild = os.fork()
            if grandchild:
                os._exit(0)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.write(wfd, str(os.getpid()).encode())
            os.closerange(3, pidfd)
            os.closerange(pidfd + 1, 65536)
            _watch(pidfd, list(mountpoints), directory)
        finally:
            os._exit(1)
    os.close(wfd)
    os.close(pidfd)
    os.waitpid(child, 0)
    with os.fdopen(rfd, "rb") as f:
        data = f.read()
    return int(data)


def stop(watcher: int) -> None:
    """Tell a watcher that the run cleaned up itself."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(watcher, signal.SIGTERM)


def prune(instances: str) -> None:
    """Remove the directories ``instances/<pid>`` of processes that are gone and that
    this user owns, detaching anything still mounted under them first."""
    try:
        names = os.listdir(instances)
    except OSError:
        return
    uid = os.getuid()
    for name in names:
        if not name.isdigit() or alive(int(name)):
            continue
        path = os.path.join(instances, name)
        try:
            if os.lstat(path).st_uid != uid and uid != 0:
                continue
        except OSError:
            continue
        for mp in _mounts_under(path):
            detach(mp)
        remove_tree(path)


def _mounts_under(directory: str) -> list[str]:
    """Mount points at or below ``directory``, deepest first."""
    prefix = directory.rstrip("/") + "/"
    found = [mp for mp in mounts.mount_points() or () if mp.startswith(prefix)]
    return sorted(found, key=len, reverse=True)
