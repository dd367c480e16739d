"""A run's instance directory ``APP/instance/<pid>`` (spec 7.1, 2.14, 12.1): its
layout, made and removed by the run, and the running instances of one build.

The layout, owned here::

    APP/instance/<pid>/     0700, removed at the end of the run (by the janitor, or the
                            next run's prune, when the run was killed)
      mount/                the container's root (fim's stack), or the external backend's union
      passwd, bashrc        the identity files bound into the sandbox
      fuse.log              the log of fim's mount daemon
      portal/, bin/         the portal's sockets, logs and wrappers (sandbox.portal.wiring)
      layers/, logs/, casefold/   an external backend's mounts (fimfs.external)

An instance is listed when its directory is a run's (it has ``portal/``), its pid
exists and the directory belongs to the caller (``APP`` is in a directory private to
the user, so this is a second check; another user's instances could not be reached
anyway: the portal accepts its own uid only). IDs are positions in the pid-sorted
list, recomputed on every call. The portal is imported only where it is used: a run
makes its instance directory before the mount daemon starts, the portal after.
"""

from __future__ import annotations

import os
from typing import NamedTuple


class Instance(NamedTuple):
    """One run's instance directory: its pid and path."""

    pid: int
    path: str

    @property
    def mount(self) -> str:
        return os.path.join(self.path, "mount")

    @property
    def passwd(self) -> str:
        return os.path.join(self.path, "passwd")

    @property
    def bashrc(self) -> str:
        return os.path.join(self.path, "bashrc")

    @property
    def log(self) -> str:
        return os.path.join(self.path, "fuse.log")

    @property
    def portal_dir(self) -> str:
        from fim.sandbox import portal

        return os.path.join(self.path, portal.PORTAL_DIR)

    @property
    def guest_socket(self) -> str:
        from fim.sandbox import portal

        return os.path.join(self.portal_dir, portal.GUEST_SOCKET)

    def create(self) -> None:
        """Make the directory and its mount point, private to the user (0700), and the
        directory of instances above it (``APP`` is private to the user: app.rundir).
        OSError when it cannot."""
        os.makedirs(os.path.dirname(self.path), 0o700, exist_ok=True)
        os.mkdir(self.path, 0o700)
        os.mkdir(self.mount, 0o700)

    def remove(self) -> None:
        """Remove the directory, never entering a mount point (the root may still be
        mounted there: osutil.files.remove_tree)."""
        from fim.osutil.files import remove_tree

        remove_tree(self.path)

    def unavailable(self) -> str | None:
        """Why this instance has no guest daemon, when it has none by design."""
        from fim.sandbox import portal

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
        inst = Instance(int(name), os.path.join(instances_dir, name))
        try:
            if os.lstat(inst.path).st_uid != uid or not os.path.isdir(inst.portal_dir):
                continue
        except OSError:
            continue
        if alive(inst.pid):
            found.append(inst)
    return sorted(found, key=lambda inst: inst.pid)


def exec_in(inst: Instance, argv: list[str], wait: float | None = None) -> int:
    """Run ``argv`` inside ``inst`` through its guest daemon (waiting ``wait`` seconds for
    it, default :data:`sandbox.portal.TIMEOUT`); the program's exit code. Raises
    :class:`sandbox.portal.PortalError`."""
    from fim.sandbox import portal

    reason = inst.unavailable()
    if reason is not None:
        raise portal.PortalError(f"Cannot run a program in instance {inst.pid}: {reason}")
    try:
        return portal.call(inst.guest_socket, argv,
                           wait=portal.TIMEOUT if wait is None else wait)
    except portal.PortalError:
        if not alive(inst.pid):
            raise portal.PortalError(f"Instance {inst.pid} ended") from None
        raise
