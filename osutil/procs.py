"""Waiting for a process to end through a pidfd (which a reused pid cannot fool)."""

from __future__ import annotations

import os
import select


def wait(pidfd: int) -> None:
    """Return once the process of ``pidfd`` has ended."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    while not poller.poll():
        pass


def wait_gone(pid: int) -> None:
    """Return once process ``pid`` has ended (at once if it is not visible)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        wait(pidfd)
    finally:
        os.close(pidfd)
