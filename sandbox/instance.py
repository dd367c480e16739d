"""Running instances of one build (spec 2.14, 12.1): ``APP/instance/<pid>`` directories
whose process is alive.

An instance is listed when its directory is a run's (it has ``portal/``), its pid
exists and the directory belongs to the caller (``APP`` is in a directory private to
the user, so this is a second check; another user's instances could not be reached
anyway: the portal accepts its own uid only). IDs are positions in the pid-sorted
list, recomputed on every call.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from fim.sandbox import portal


class Instance(NamedTuple):
    """One running instance: its pid and directory."""

    pid: int
    path: str

    @property
    def portal_dir(self) -> str:
        return os.path.join(self.path, portal.PORTAL_DIR)

    @property
    def guest_socket(self) -> str:
        return os.path.join(self.portal_dir, portal.GUEST_SOCKET)

    def unavailable(self) -> str | None:
        """Why this instance has no guest daemon, when it has none by design."""
        try:
            with open(os.path.join(self.portal_dir, portal.UNAVAILABLE), encoding="utf-8") as f:
                return f.read().strip() or None
        except OSError:
            return None


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(instances_dir: str, exclude: int | None = None) -> list[Instance]:
    """The caller's live instances under ``instances_dir``, sorted by pid."""
    try:
        names = os.listdir(instances_dir)
    except OSError:
        return []
    uid = os.getuid()
    found = []
    for name in names:
        if not name.isdigit() or int(name) == exclude:
            continue
        path = os.path.join(instances_dir, name)
        try:
            if os.lstat(path).st_uid != uid or not os.path.isdir(
                    os.path.join(path, portal.PORTAL_DIR)):
                continue
        except OSError:
            continue
        if alive(int(name)):
            found.append(Instance(int(name), path))
    return sorted(found, key=lambda inst: inst.pid)


def exec_in(inst: Instance, argv: list[str], wait: float = portal.TIMEOUT) -> int:
    """Run ``argv`` inside ``inst`` through its guest daemon; the program's exit code.
    Raises :class:`sandbox.portal.PortalError`."""
    reason = inst.unavailable()
    if reason is not None:
        raise portal.PortalError(f"Cannot run a program in instance {inst.pid}: {reason}")
    try:
        return portal.call(inst.guest_socket, argv, wait=wait)
    except portal.PortalError:
        if not alive(inst.pid):
            raise portal.PortalError(f"Instance {inst.pid} ended") from None
        raise
