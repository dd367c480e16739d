"""How a run mounts the image's layers on this host (issue 21, docs/hosts.md):

* ``fuse``: the usual way: root mounts FUSE itself, a normal user through the setuid
  ``fusermount3``;
* ``userns``: a normal user without a usable ``fusermount3`` (minimal hosts,
  containers): the run enters a user and mount namespace of its own
  (:mod:`sandbox.userns`), where libfuse mounts without the helper;
* ``extract``: no usable ``/dev/fuse``: the layers are extracted into a per-user cache
  (:mod:`app.extractcache`) and stacked by bwrap's kernel overlay.
"""

from __future__ import annotations

import os

from fim.app import log
from fim.app.log import Fatal

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Callable

FUSE, USERNS, EXTRACT = "fuse", "userns", "extract"


def choose() -> str:
    """The way this run mounts, from what the host offers."""
    from fim.fimfs.fuse.mounttable import fuse_device_usable, helper_usable

    if not fuse_device_usable():
        return EXTRACT
    if os.getuid() == 0 or helper_usable("fusermount3"):
        return FUSE
    return USERNS


def enter_userns() -> None:
    """Enter the run's own user and mount namespace; a one-line Fatal when the host
    blocks user namespaces."""
    from fim.fimfs.fuse.mounttable import can_mount_directly
    from fim.sandbox import userns

    try:
        userns.enter()
    except OSError as exc:
        reason = userns.blocked_reason(exc.errno or 0)
        raise Fatal(f"fusermount3 is missing or unusable and {reason}") from None
    if not can_mount_directly():  # AppArmor's restriction: a namespace without capabilities
        from fim.sandbox.bwrap import explain_failure

        raise Fatal("fusermount3 is missing or unusable and the user namespace of this run "
                    f"has no capabilities: {explain_failure(os.getuid())}")
    log.emit("D", "fusermount3 is missing or unusable: mounting in a user namespace of "
                  "the run's own", "hostmount.py")


def extract_notice() -> None:
    """Why this run uses extracted layers."""
    reason = "missing" if not os.path.exists("/dev/fuse") else (
        "not the FUSE device or not readable and writable")
    log.notice(f"/dev/fuse is {reason}: running from layers extracted into the cache "
               "(FUSE is not needed; the first run extracts)")


#: Ubuntu (>= 23.10) confines unprivileged user namespaces with AppArmor and ships a
#: profile that allows them to its own bwrap.
APPARMOR_USERNS = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
HOST_BWRAP = "/usr/bin/bwrap"


def read_sysctl(path: str) -> str | None:
    """A /proc/sys value, None when absent."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def host_bwrap(uid: int, probe: Callable[[str], str | None]) -> str | None:
    """The host's bwrap when AppArmor allows user namespaces only to it (and the caller
    is not root); None: use the bundled one."""
    if uid == 0 or probe(APPARMOR_USERNS) != "1":
        return None
    return HOST_BWRAP if os.access(HOST_BWRAP, os.X_OK) else None
