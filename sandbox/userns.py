"""The user namespace of a sandbox started by host root (bwrap ``--userns FD``).

bwrap makes a user namespace only when asked, and then maps one uid: a run of host root
without one gives the program the host's capabilities; with bwrap's one-uid map, every
file of the image owned by another uid (``_apt``, ``man``...) shows as ``nobody`` and
``chown`` to it fails. Root may map every uid instead, so the namespace made here maps
each uid and gid to itself: owners stay what they are, root inside is uid 0, and its
capabilities are the namespace's, which own nothing of the host (no module loading, no
mount over a host path, no file of the host beyond what the sandbox binds).
"""

from __future__ import annotations

import os

_CLONE_NEWUSER = 0x10000000
#: every id to itself (the largest count a map line takes)
IDENTITY_MAP = "0 0 4294967295\n"


def _unshare_user() -> None:
    unshare = getattr(os, "unshare", None)  # Python >= 3.12
    if unshare is not None:
        unshare(_CLONE_NEWUSER)
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWUSER) != 0:
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
            _unshare_user()
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
