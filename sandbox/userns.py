"""The user namespaces fim makes itself (bwrap makes the sandbox's own).

**Host root's sandbox** (bwrap ``--userns FD``, :func:`identity_namespace`). bwrap
makes a user namespace only when asked, and then maps one uid: a run of host root
without one gives the program the host's capabilities; with bwrap's one-uid map, every
file of the image owned by another uid (``_apt``, ``man``...) shows as ``nobody`` and
``chown`` to it fails. Root may map every uid instead, so the namespace made here maps
each uid and gid to itself: owners stay what they are, root inside is uid 0, and its
capabilities are the namespace's, which own nothing of the host (no module loading, no
mount over a host path, no file of the host beyond what the sandbox binds).

**A normal user's run without a usable** ``fusermount3`` (minimal hosts, containers;
:func:`enter`). An unprivileged process may mount FUSE inside a user namespace it owns
(Linux >= 4.18): libfuse mounts directly with mount(2) when it has the privilege and
calls fusermount3 only otherwise. :func:`enter` moves the calling process into a new
user namespace that maps only its own uid and gid (so nothing about who it is changes)
and a new mount namespace owned by it: its mount daemons (forked, so they keep the
namespace's capabilities) mount there, bwrap (exec'd, so without them) nests its own
user namespace in it, and unmounting is umount2(2) there (:func:`osutil.mounts.umount2`). The mounts
are slaves of the host's and never propagate out; they go away with the last process
of the namespace.
"""

from __future__ import annotations

import errno
import os

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
#: every id to itself (the largest count a map line takes)
IDENTITY_MAP = "0 0 4294967295\n"
#: Why even root cannot make one.
BLOCKED_FOR_ROOT = ("this host blocks user namespaces (a chroot, or a container's seccomp "
                    "policy); run the image outside the chroot or container")


def _libc() -> object:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> None:
    unshare = getattr(os, "unshare", None)  # Python >= 3.12
    if unshare is not None:
        unshare(flags)
        return
    import ctypes

    if _libc().unshare(flags) != 0:  # type: ignore[attr-defined]
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def identity_namespace() -> int:
    """A new user namespace mapping every uid and gid to itself, as a descriptor
    (close-on-exec; pass it to bwrap). Needs CAP_SETUID/CAP_SETGID (host root).

    A child process makes the namespace and waits while this process writes its maps
    (a process cannot give itself more than its own id); the descriptor keeps the
    namespace alive once the child is gone. Raises OSError."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the helper child
        code = 1
        try:
            os.close(ready_r)
            os.close(done_w)
            _unshare(_CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(done_r, 1)
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError("could not create a user namespace")
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w", encoding="ascii") as f:
                f.write(IDENTITY_MAP)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(done_w)
        os.close(ready_r)
        os.waitpid(pid, 0)


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


def enter() -> None:
    """Move this (single-threaded) process into a user namespace of its own mapping its
    uid and gid to themselves, and a mount namespace owned by it. Raises OSError
    (EPERM: user namespaces are blocked here; EINVAL: the process has threads)."""
    uid, gid = os.getuid(), os.getgid()
    _unshare(_CLONE_NEWUSER | _CLONE_NEWNS)
    _write("/proc/self/setgroups", "deny")  # required before an unprivileged gid_map
    _write("/proc/self/uid_map", f"{uid} {uid} 1\n")
    _write("/proc/self/gid_map", f"{gid} {gid} 1\n")


def can_create() -> bool:
    """Whether this process may create a user namespace (tried in a child)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            _unshare(_CLONE_NEWUSER)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def blocked_reason(err: int) -> str:
    """One line naming why a user namespace could not be made (``err``: unshare's errno)."""
    from fim.sandbox.bwrap import explain_failure

    if err == errno.EINVAL:
        return "cannot create a user namespace: the process has threads"
    return explain_failure(os.getuid(), can_unshare=lambda: False)
