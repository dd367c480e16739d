"""The run lock of a data directory: which runs use it, so that `fim-layer commit`
does not clear an upper directory a container is writing (docs/layers.md).

Every run holds a shared flock on ``DATA/instances.lock`` (:func:`hold`: kept by the
run and its mount daemon, which inherits the descriptor, released by the kernel when
they die); a commit takes it exclusively or refuses (:func:`exclusive`), and runs
started during a commit wait for it.
"""

from __future__ import annotations

import fcntl
import os
import time

from fim.app import log
from fim.app.log import CommandError
from fim.fimfs.linger import LINGER

LOCK_NAME = "instances.lock"
#: How long a commit waits for runs that are just ending to let go: their mount daemon,
#: which stays up to fimfs.linger.LINGER s after the last run for the next one.
LOCK_GRACE = LINGER + 3.0
_held: list[int] = []  # the run's lock descriptor, open until the process ends


def hold(data: str) -> None:
    """Mark this run as an instance using ``data`` until the process (and the mount
    daemon it forks, which inherits the descriptor) ends; waits for a running commit."""
    try:
        fd = os.open(os.path.join(data, LOCK_NAME), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC,
                     0o644)
    except OSError:
        return  # a read-only data directory: nothing can commit into it either
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("Waiting for a layer commit to finish")
        fcntl.flock(fd, fcntl.LOCK_SH)
    _held.append(fd)


def held_fds() -> tuple[int, ...]:
    """The descriptors :func:`hold` keeps open (a mount daemon that outlives the run
    keeps them: a commit waits for its mount)."""
    return tuple(_held)


def exclusive(data: str) -> int:
    """The lock of ``data`` held exclusively (the descriptor), or a refusal."""
    path = os.path.join(data, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise CommandError(f"Could not open '{path}': {exc.strerror}") from None
    # A run that just ended may still have its mount daemon (which inherits the lock)
    # finishing for a few milliseconds: wait a moment before calling it a running instance.
    deadline = time.monotonic() + LOCK_GRACE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
    os.close(fd)
    raise CommandError("Another instance of this image is running with the data "
                       f"directory '{data}' (or another commit): stop it, then "
                       "commit")
