"""The portal's wiring into a sandbox: ``INST/portal`` bound in, ``FIM_PORTAL_DIR`` set,
the host daemon started, and (with a frozen fim) the dispatcher and the guest daemon
made runnable inside.

Inside the sandbox both are the frozen fim (``FIM_PORTAL_MODE``), run by the host's
dynamic loader and glibc bound in read-only under ``APP/glibc``, so they work in an
image without python3 or even glibc. This module knows the frozen runtime's layout
(``APP/bin/fim``, ``APP/bin/bash``, ``APP/bin/_internal``) and PyInstaller's bootloader.
"""

from __future__ import annotations

import os
import struct

from fim.sandbox.bwrap import Bind
from fim.sandbox.portal.protocol import (
    DAEMON,
    DISPATCHER,
    ENV_DIR,
    GUEST_SOCKET,
    PORTAL_DIR,
    UNAVAILABLE,
    PortalError,
)
from fim.sandbox.portal.server import Log, start_host

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Mapping

    from fim.sandbox.bwrap import Sandbox

#: glibc's libraries the frozen fim loads from the host (everything else it bundles)
GLIBC = ("libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1",
         "libutil.so.1")
MODE_VAR = "FIM_PORTAL_MODE"  # read (and removed) first thing by cli/frozen_main.py
#: PyInstaller's bootloader (onedir) re-executes itself to set LD_LIBRARY_PATH unless
#: it is told it is that second process; run through the loader it would re-execute the
#: loader without --library-path. cli/frozen_main.py removes the variables at once.
_WRAPPER = """#!%(bash)s
export _PYI_ARCHIVE_FILE=%(fim)s _PYI_PARENT_PROCESS_LEVEL=-1
%(var)s=%(mode)s exec %(loader)s --library-path %(libs)s --argv0 %(fim)s %(fim)s "$@"
"""


def elf_interpreter(path: str) -> str | None:
    """The PT_INTERP of the ELF executable ``path`` (its dynamic loader)."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
        phoff, = struct.unpack_from("<Q", data, 32)
        phentsize, phnum = struct.unpack_from("<HH", data, 54)
        for i in range(phnum):
            base = phoff + i * phentsize
            if struct.unpack_from("<I", data, base)[0] == 3:
                offset, = struct.unpack_from("<Q", data, base + 8)
                size, = struct.unpack_from("<Q", data, base + 32)
                return data[offset:offset + size].rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def _frozen_inside(sb: Sandbox, app_bin: str, bindir: str) -> bool:
    """Make the frozen fim runnable inside (the image may have no glibc at all): the
    host's loader and glibc bound read-only under ``APP/glibc``, and the wrappers
    ``fim_portal`` and ``fim_portal_daemon`` in ``bindir``. False without a frozen fim
    (``--runtime python``)."""
    fim = os.path.join(app_bin, "fim")
    loader = elf_interpreter(fim) if os.access(fim, os.X_OK) else None
    if loader is None or not os.path.exists(loader):
        return False
    real = os.path.realpath(loader)
    inside = os.path.join(os.path.dirname(app_bin), "glibc")
    sb.files[real] = os.path.join(inside, os.path.basename(loader))
    for name in GLIBC:
        lib = os.path.join(os.path.dirname(real), name)
        if os.path.exists(lib):
            sb.files[os.path.realpath(lib)] = os.path.join(inside, name)
    os.makedirs(bindir, 0o700, exist_ok=True)
    for name, mode in ((DISPATCHER, "dispatcher"), (DAEMON, "daemon")):
        path = os.path.join(bindir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(_WRAPPER % {"bash": os.path.join(app_bin, "bash"), "var": MODE_VAR,
                                "mode": mode, "fim": fim,
                                "loader": os.path.join(inside, os.path.basename(loader)),
                                "libs": f"{inside}:{app_bin}/_internal"})
        os.chmod(path, 0o700)
    sb.binds.append(Bind("ro", bindir, bindir))
    return True


def prepare(sb: Sandbox, instance_dir: str, app_bin: str, ref_pid: int,
            environ: Mapping[str, str]) -> None:
    """Make the portal part of a sandbox and start the host daemon (with ``environ``,
    the run's environment: the host side of ``fim_portal``): ``INST/portal`` (0700)
    bound at its own path (the sandbox's /tmp is private), FIM_PORTAL_DIR set,
    ``fim_portal`` on the sandbox's PATH (``INST/bin``, after APP/bin), the guest daemon
    in the launch line."""
    directory = os.path.join(instance_dir, PORTAL_DIR)
    os.makedirs(directory, 0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    sb.binds.append(Bind("rw", directory, directory))
    sb.setenv[ENV_DIR] = directory
    bindir = os.path.join(instance_dir, "bin")
    if _frozen_inside(sb, app_bin, bindir):
        path = sb.environ.get("PATH", "").split(":")
        path.insert(1 if path and path[0] == app_bin else 0, bindir)
        sb.environ["PATH"] = ":".join(path)
        sb.background.append([os.path.join(bindir, DAEMON), "guest",
                              os.path.join(directory, GUEST_SOCKET)])
    else:
        with open(os.path.join(directory, UNAVAILABLE), "w", encoding="utf-8") as f:
            f.write("this image's runtime cannot run the portal inside (--runtime python)\n")
    try:
        start_host(directory, ref_pid, environ)
    except PortalError as exc:  # the program still runs; fim_portal will say so
        Log(os.path.join(directory, "host.log"))(str(exc))
